"""Known coordinates (inpainting): part of every sample held fixed while the rest is denoised.

Design note section 6. A mask over the sample's coordinates splits them into known K and free F.
Before every model call at step t the known coordinates of the model's input are replaced:
``noised=True`` (the standard replacement) by a draw of the forward process at t,
``sqrt(abar_t) k + sqrt(1 - abar_t) eps``, fresh for every step and independent of the past;
``noised=False`` by k itself. The chain is then a Gaussian chain on the free coordinates alone,
so ASD stays exact: drafts get the same known inputs, and the accept test and the reflection run
over F only (:func:`pin_known` makes the K parts of the two means equal to the draft, so their
factors cancel in p/q and the reflection direction is zero in K). The readout is ``x0hat`` with K
overwritten by k.

The known inputs of every step are drawn up front, once per chain (section 7: drawing a chain's
noise up front is the same as drawing it as it goes), so the value at step t is one fixed tensor
that DDPM, DDIM and every ASD draft of step t read alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from asd_policy.sampling.schedule import NoiseSchedule

__all__ = ["Known", "KnownInputs", "known_inputs", "pin_known"]


@dataclass(frozen=True)
class Known:
    """Coordinates to hold fixed: ``mask`` (bool, True = known) and the clean ``values`` there,
    both of the sample's shape ``(B, ...)`` in the model's (normalised) units."""

    mask: torch.Tensor
    values: torch.Tensor
    noised: bool = True

    def check(self, shape: tuple[int, ...]) -> None:
        for name in ("mask", "values"):
            got = getattr(self, name)
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(shape):
                have = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise ValueError(f"known.{name} must be a Tensor of the sample's shape {tuple(shape)}, got {have}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"known.mask must be a bool Tensor (True where the value is known), got {self.mask.dtype}")
        if not bool(torch.isfinite(self.values[self.mask]).all()):
            raise ValueError("known.values has NaN or inf where known.mask is True")


@dataclass(frozen=True)
class KnownInputs:
    """The known coordinates of every step's model input: ``steps[b, t]`` is chain b's input at
    step t (t = 0..T-1), ``clean[b]`` its readout values, ``mask[b]`` where they apply."""

    mask: torch.Tensor  # [B, ...] bool
    steps: torch.Tensor  # [B, T, ...]
    clean: torch.Tensor  # [B, ...]

    def fill(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (rows ``rows`` of the batch, all when None) with its known coordinates set to
        their inputs at steps ``t`` (one step per row; steps < 0 are read as 0)."""
        rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
        return torch.where(self.mask[rows], self.steps[rows, t.clamp_min(0)], x)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """The finished samples with the known coordinates exactly their clean values."""
        return torch.where(self.mask, self.clean, x)

    def rows(self, index: torch.Tensor) -> "KnownInputs":
        return KnownInputs(self.mask[index], self.steps[index], self.clean[index])


def known_inputs(known: Known, schedule: NoiseSchedule, draw_noise) -> KnownInputs:
    """Every step's known input, drawn once up front; ``draw_noise(shape)`` gives N(0, I) noise."""
    k = known.values
    T = schedule.num_train_timesteps
    if not known.noised:
        return KnownInputs(known.mask, k[:, None].expand(k.shape[0], T, *k.shape[1:]), k)
    abar = schedule.alphas_cumprod.to(k.device, k.dtype).reshape(1, T, *(1,) * (k.dim() - 1))
    eps = draw_noise((k.shape[0], T, *k.shape[1:]))
    return KnownInputs(known.mask, abar.sqrt() * k[:, None] + (1 - abar).sqrt() * eps, k)


def pin_known(mu: torch.Tensor, draft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A transition mean with its known coordinates set to the draft's, so that the Gaussian factors
    of K cancel in p/q and the reflection leaves K alone: the accept test runs over F only."""
    return torch.where(mask, draft, mu)
