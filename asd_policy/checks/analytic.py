"""An exact denoiser for Gaussian-mixture data: a model with a known answer.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). Under x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, component k
gives x_t ~ N(sqrt(abar) mu_k, v_k I) with v_k = abar s_k^2 + 1 - abar, so the posterior mean is

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + sqrt(abar) s_k^2 / v_k (x_t - sqrt(abar) mu_k)),

with responsibilities r_k from those Gaussians. Sampler tests and acceptance-rate benchmarks use it:
sequential DDPM with this model draws (up to discretisation) from the mixture, so any sampler that
claims to be exact must match DDPM on it, and the mode weights are known.
"""

from __future__ import annotations

import torch

from asd_policy.sampling.schedule import NoiseSchedule


class GaussianMixtureDenoiser(torch.nn.Module):
    """model(x_t, t, cond) -> the exact prediction (of schedule.prediction_type) for mixture data."""

    def __init__(
        self, means: torch.Tensor, weights: torch.Tensor, std: float | torch.Tensor, schedule: NoiseSchedule
    ) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.dim() != 1 or weights.shape[0] != means.shape[0] or (weights <= 0).any():
            raise ValueError("weights must be a positive vector with one entry per mixture component (rows of means)")
        std = torch.as_tensor(std, dtype=torch.float64).expand(means.shape[0]).clone()
        self.register_buffer("means", means)
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.register_buffer("var", std**2)
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.double().clone())
        self.prediction_type = schedule.prediction_type

    @property
    def event_shape(self) -> torch.Size:
        return self.means.shape[1:]

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t.double().flatten(1)  # [N, E]
        mu = self.means.flatten(1)  # [K, E]
        abar = self.alphas_cumprod[t][:, None]  # [N, 1]
        a = abar.sqrt()
        v = abar * self.var[None, :] + 1 - abar  # [N, K]
        sq_dist = (x[:, None, :] - a[:, :, None] * mu[None]).square().sum(-1)  # [N, K]
        log_r = self.log_weights[None] - 0.5 * sq_dist / v - 0.5 * mu.shape[1] * v.log()
        # softmax by hand: torch.softmax over a few float64 rows opens a parallel region that costs
        # milliseconds on a busy CPU, more than the rest of the model
        r = (log_r - log_r.amax(dim=1, keepdim=True)).exp()
        r = r / r.sum(dim=1, keepdim=True)
        gain = a * self.var[None, :] / v  # [N, K]
        per_component = mu[None] + gain[:, :, None] * (x[:, None, :] - a[:, :, None] * mu[None])
        return (r[:, :, None] * per_component).sum(1).reshape(x_t.shape)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        x0 = self.posterior_mean(x_t, t)
        abar = self.alphas_cumprod[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        x = x_t.double()
        if self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "epsilon":
            out = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        else:  # v_prediction
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            out = abar.sqrt() * eps - (1 - abar).sqrt() * x0
        return out.to(x_t.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws x0 from the mixture (float32)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
        std = self.var[k].sqrt().reshape(-1, *([1] * len(self.event_shape)))
        return (self.means[k] + std * noise).float()

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the closest component mean for each row of x."""
        return torch.cdist(x.double().flatten(1), self.means.flatten(1)).argmin(1)


def two_mode_mixture(schedule: NoiseSchedule, event_shape: tuple[int, ...] = (4, 2), weights=(0.3, 0.7), separation: float = 0.6, std: float = 0.1) -> GaussianMixtureDenoiser:
    """The standard test problem: two modes at +/- separation in every coordinate, unequal weights."""
    means = torch.stack([torch.full(event_shape, -separation), torch.full(event_shape, separation)])
    return GaussianMixtureDenoiser(means, torch.tensor(weights), std, schedule)
