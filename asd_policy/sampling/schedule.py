"""DDPM noise schedules and the Gaussian transition coefficients of the reverse chain.

Notation follows ../shared/design/asd-sampler.md (diffusers indexing, t = 0..T-1). One reverse
step is an isotropic Gaussian whose mean is affine in the model's clean-sample estimate:

    x_{t-1} = A_t * x_t + B_t * x0hat(x_t, t) + S_t * z,      z ~ N(0, I)

Keyword names are those of diffusers' ``DDPMScheduler`` config, so a diffusion_policy or lerobot
noise-scheduler config carries over unchanged.

Strided DDPM. With ``num_inference_steps=N < num_train_timesteps=T`` the schedule is the chain
diffusers' ``DDPMScheduler.set_timesteps(N)`` samples: N steps at the training timesteps
t_k = k * (T // N) ("leading" spacing), each an ancestral step from t_k to t_{k-1} (abar = 1
below 0) with step beta ``1 - abar[t_k] / abar[t_{k-1}]``. It has the same affine-mean form, so
every table (A, B, S, betas, alphas_cumprod) is indexed by the chain index k = 0..N-1, and
``model_timesteps[k] = t_k`` is the timestep the network is called at. The full chain is the
case N = T, where k = t.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch

_TABLES = ("betas", "alphas_cumprod", "A", "B", "S")  # float tables indexed by the chain index
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: betas from a cumulative-alpha curve, capped at max_beta."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


@dataclass
class NoiseSchedule:
    """A DDPM noise schedule with the per-step transition coefficients precomputed (float64)."""

    num_train_timesteps: int = 100
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"
    num_inference_steps: int | None = None  # N < T: the strided sub-chain of diffusers' set_timesteps(N)

    betas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    A: torch.Tensor = field(init=False, repr=False)
    B: torch.Tensor = field(init=False, repr=False)
    S: torch.Tensor = field(init=False, repr=False)
    model_timesteps: torch.Tensor = field(init=False, repr=False)  # chain index k -> training timestep t_k

    def __post_init__(self) -> None:
        T = self.num_train_timesteps
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {T!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r} is unknown; use one of {BETA_SCHEDULES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={self.prediction_type!r} is unknown; use one of {PREDICTION_TYPES}")
        if self.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type={self.variance_type!r} is unknown; use one of {VARIANCE_TYPES}")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")
        if self.beta_schedule != "squaredcos_cap_v2" and not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        N = self.num_inference_steps
        if N is not None and (not isinstance(N, int) or isinstance(N, bool) or not 1 <= N <= T):
            raise ValueError(f"num_inference_steps must be None (the full chain) or an int in [1, "
                             f"num_train_timesteps={T}], got {N!r}")

        # diffusers builds betas in float32; do the same so the chains agree bit for bit in their inputs,
        # then carry on in float64 so the derived coefficients lose nothing more.
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float32)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float32) ** 2
        else:
            betas = _cosine_betas(T).float()
        betas = betas.double()
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        self.model_timesteps = torch.arange(self.num_steps) * (T // self.num_steps)
        if self.strided:  # the sub-chain t_k -> t_{k-1}: diffusers' current_alpha_t and current_beta_t
            abar = abar[self.model_timesteps]
            alphas = abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
            betas = 1.0 - alphas
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])

        self.betas = betas
        self.alphas_cumprod = abar
        self.B = abar_prev.sqrt() * betas / (1 - abar)
        self.A = alphas.sqrt() * (1 - abar_prev) / (1 - abar)
        if self.variance_type == "fixed_large":
            var = betas.clone()
        else:
            var = (1 - abar_prev) / (1 - abar) * betas
        var[0] = 0.0  # the last step (t = 0) is a noiseless readout of x0hat
        self.S = var.sqrt()

    @property
    def num_steps(self) -> int:
        """The chain's length: the samplers' steps run from num_steps - 1 down to 0."""
        return self.num_train_timesteps if self.num_inference_steps is None else self.num_inference_steps

    @property
    def strided(self) -> bool:
        """True for a strided sub-chain (fewer steps than the training schedule)."""
        return self.num_steps < self.num_train_timesteps

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The training timestep the network is called at for chain indices `t` (t itself on the full chain)."""
        return self.model_timesteps[t] if self.strided else t

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "NoiseSchedule":
        """A copy whose coefficient tables live on `device` in `dtype`.

        The samplers call this once per call, so that no model step copies a table host-to-device
        (on a GPU each such copy is a stall).
        """
        moved = copy.copy(self)
        for name in _TABLES:
            setattr(moved, name, getattr(self, name).to(device=device, dtype=dtype))
        moved.model_timesteps = self.model_timesteps.to(device)
        return moved

    # ---- config round-trip -------------------------------------------------------------------
    def config(self) -> dict:
        """The constructor keywords (JSON-serialisable), e.g. for a checkpoint."""
        return {k: v for k, v in asdict(self).items() if k not in (*_TABLES, "model_timesteps")}

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        """Build from a diffusers/diffusion_policy-style scheduler config; unrelated keys are ignored."""
        known = {f for f in cls.__dataclass_fields__ if cls.__dataclass_fields__[f].init}
        return cls(**{k: v for k, v in config.items() if k in known})

    @classmethod
    def from_diffusers(cls, scheduler_or_config) -> "NoiseSchedule":
        """The schedule of a diffusers ``DDPMScheduler`` (or ``DDIMScheduler``), its ``.config``, or a dict.

        Every setting the reverse chain depends on must be one this class implements; anything else
        (trained betas, thresholding, a timestep offset, another variance type) is refused by name
        rather than silently dropped. diffusers is not imported.
        """
        config = getattr(scheduler_or_config, "config", scheduler_or_config)
        config = dict(config.items()) if hasattr(config, "items") else None
        if config is None:
            raise TypeError(f"from_diffusers takes a diffusers scheduler, its .config or a dict, not {type(scheduler_or_config).__name__}")
        refused = {
            "trained_betas": lambda v: v is None,
            "thresholding": lambda v: not v,
            "steps_offset": lambda v: not v,
            "rescale_betas_zero_snr": lambda v: not v,
            "timestep_spacing": lambda v: v in (None, "leading"),
            "set_alpha_to_one": lambda v: v in (None, True),
            "variance_type": lambda v: v in VARIANCE_TYPES,
        }
        bad = {k: config[k] for k, ok in refused.items() if k in config and not ok(config[k])}
        if bad:
            raise ValueError(f"scheduler settings {bad} are not supported; NoiseSchedule implements DDPM with "
                             f"trained_betas=None, no thresholding, steps_offset=0, leading timestep spacing and "
                             f"variance_type in {VARIANCE_TYPES}")
        return cls.from_config(config)

    # ---- model output -> clean-sample estimate ------------------------------------------------
    def predict_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0hat, epsilon-hat) from the model output at (x_t, t); x0hat clipped if clip_sample.

        epsilon-hat is derived from the unclipped prediction, as diffusers' DDIM does by default.
        """
        abar = _per_row(self.alphas_cumprod, t, x_t)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - s * eps) / a
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (x_t - a * x0) / s
        else:  # v_prediction
            x0 = a * x_t - s * model_output
            eps = a * model_output + s * x_t
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predict_x0_eps(model_output, x_t, t)[0]

    # ---- training helpers ---------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t per row."""
        abar = _per_row(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for this prediction_type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        abar = _per_row(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A_t, B_t, S_t) for a tensor of step indices, shaped to broadcast against `like`'s rows."""
        return _per_row(self.A, t, like), _per_row(self.B, t, like), _per_row(self.S, t, like)


def _per_row(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] in `like`'s dtype/device, shaped [*t.shape, 1, ..., 1] to broadcast over like's trailing dims."""
    values = table[t] if table.device == like.device and table.dtype == like.dtype else table.to(like)[t]
    return values.reshape(*t.shape, *([1] * (like.dim() - t.dim())))
