"""The noise-prediction network: a conditional 1-D temporal U-Net over an action sequence.

This is the low-dimensional ``ConditionalUnet1D`` design of Chi et al. (2023), "Diffusion Policy":
the action chunk ``[N, H, D]`` is treated as a 1-D signal of length ``H`` with ``D`` channels; every
residual block is modulated by FiLM (per-channel scale and bias) computed from the concatenation of a
sinusoidal embedding of the diffusion step and the flattened observation history.

Interface (the one every sampler in :mod:`asd_policy.sampling` calls)::

    model(x_t: Tensor[N, H, D], t: LongTensor[N], cond: Tensor[N, cond_dim] | None) -> Tensor[N, H, D]

The forward pass has no data-dependent Python control flow and no host synchronisation, so it can
be captured in a CUDA graph or compiled with ``torch.compile``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "UNET_SIZES",
    "UNetConfig",
    "ConditionalUnet1D",
    "SinusoidalStepEmbedding",
    "build_unet",
    "unet_kwargs",
    "count_parameters",
]

#: Named sizes: channel widths of the three U-Net levels and the diffusion-step embedding width.
#: ``small`` (~4.5M parameters for low-dim tasks) trains on a couple of CPU cores; ``chi`` (~65M) is
#: the size published by Chi et al. (2023).  ``tiny`` is for tests.
UNET_SIZES: dict[str, dict] = {
    "tiny": {"down_dims": (16, 32, 64), "step_embed_dim": 32},
    "small": {"down_dims": (64, 128, 256), "step_embed_dim": 128},
    "chi": {"down_dims": (256, 512, 1024), "step_embed_dim": 256},
}


@dataclass
class UNetConfig:
    """Everything needed to rebuild a :class:`ConditionalUnet1D` (stored in checkpoints)."""

    action_dim: int
    cond_dim: int
    down_dims: tuple[int, ...] = (64, 128, 256)
    step_embed_dim: int = 128
    kernel_size: int = 5
    n_groups: int = 8
    # FiLM with a per-channel scale and a bias (Chi et al.); False: the bias alone (LeRobot's
    # use_film_scale_modulation=False).
    film_scale: bool = True
    # GroupNorm groups of the output head's conv block; None: n_groups. LeRobot (and diffusion_policy)
    # build that block with 8 groups whatever n_groups is.
    head_n_groups: int | None = None
    size: str | None = None  # informational: the named size the widths came from, if any

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        if self.cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {self.cond_dim}")
        if len(self.down_dims) < 1:
            raise ValueError("down_dims must name at least one level")
        for d in self.down_dims:
            if d % self.n_groups:
                raise ValueError(
                    f"every entry of down_dims must be divisible by n_groups={self.n_groups}, got {self.down_dims}"
                )
        if self.head_n_groups is not None and (self.head_n_groups < 1 or self.down_dims[0] % self.head_n_groups):
            raise ValueError(
                f"head_n_groups={self.head_n_groups} must divide down_dims[0]={self.down_dims[0]} (or be null: n_groups)"
            )
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.step_embed_dim % 2:
            raise ValueError(f"step_embed_dim must be even, got {self.step_embed_dim}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["down_dims"] = list(self.down_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {sorted(unknown)}")
        return cls(**d)

    @property
    def horizon_multiple(self) -> int:
        """The prediction horizon must be a multiple of this (one halving per inner level)."""
        return 2 ** (len(self.down_dims) - 1)


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of an integer (or real) diffusion step."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        half = dim // 2
        # exp(-log(P) * k / (half - 1)), k = 0..half-1 (a buffer: moves with .to(device))
        scale = math.log(max_period) / max(half - 1, 1)
        self.register_buffer("freqs", torch.exp(-scale * torch.arange(half, dtype=torch.float32)), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvNormAct(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the first's output is scaled and shifted per channel by the conditioning
    (shifted only, without ``film_scale``)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int, film_scale: bool = True):
        super().__init__()
        self.c_out = c_out
        self.film_scale = film_scale
        self.conv1 = ConvNormAct(c_in, c_out, kernel_size, n_groups)
        self.conv2 = ConvNormAct(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out if film_scale else c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(x)
        if self.film_scale:
            scale, shift = self.film(c).unsqueeze(-1).chunk(2, dim=1)  # the scales first, then the biases
            h = scale * h + shift
        else:
            h = h + self.film(c).unsqueeze(-1)
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Conditional 1-D temporal U-Net (noise or sample predictor) over ``[N, H, D]`` action chunks."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        k, g = config.kernel_size, config.n_groups
        e = config.step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(e),
            nn.Linear(e, 4 * e),
            nn.Mish(),
            nn.Linear(4 * e, e),
        )
        film_dim = e + config.cond_dim

        def block(c_in: int, c_out: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(c_in, c_out, film_dim, k, g, config.film_scale)

        widths = (config.action_dim, *config.down_dims)
        n_levels = len(config.down_dims)

        self.down = nn.ModuleList()
        for i in range(n_levels):
            c_in, c_out = widths[i], widths[i + 1]
            self.down.append(
                nn.ModuleList(
                    [
                        block(c_in, c_out),
                        block(c_out, c_out),
                        # halve the length on every level but the innermost
                        nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if i < n_levels - 1 else nn.Identity(),
                    ]
                )
            )
        c_mid = config.down_dims[-1]
        self.mid = nn.ModuleList(
            [block(c_mid, c_mid), block(c_mid, c_mid)]
        )
        # Up path: one level per down level except the outermost; each takes the skip of the level it
        # mirrors (concatenated on channels) and doubles the length afterwards.
        self.up = nn.ModuleList()
        for i in reversed(range(1, n_levels)):
            c_here, c_next = widths[i + 1], widths[i]
            self.up.append(
                nn.ModuleList(
                    [
                        block(2 * c_here, c_next),
                        block(c_next, c_next),
                        nn.ConvTranspose1d(c_next, c_next, 4, stride=2, padding=1),
                    ]
                )
            )
        c0 = config.down_dims[0]
        head_groups = config.head_n_groups or g
        self.head = nn.Sequential(ConvNormAct(c0, c0, k, head_groups), nn.Conv1d(c0, config.action_dim, 1))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Predict the noise (or clean sample) for ``x_t`` at step ``t``.

        Args:
            x_t: ``[N, H, D]`` noisy action chunks.
            t: ``[N]`` integer diffusion steps (a 0-d tensor is broadcast over the batch).
            cond: ``[N, cond_dim]`` flattened observation history, or ``None`` for an unconditional
                model (``cond_dim == 0``).
        Returns:
            ``[N, H, D]``, same dtype as ``x_t``.
        """
        n = x_t.shape[0]
        t = t.reshape(-1).expand(n)
        c = self.step_encoder(t)
        if self.config.cond_dim > 0:
            if cond is None:
                raise ValueError(f"this model is conditional (cond_dim={self.config.cond_dim}); cond must be given")
            c = torch.cat([c, cond.reshape(n, -1).to(c.dtype)], dim=-1)
        c = c.to(x_t.dtype)

        h = x_t.transpose(1, 2)  # [N, D, H]: actions as channels, time as length
        skips = []
        for block1, block2, downsample in self.down:
            h = block2(block1(h, c), c)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, c)
        for block1, block2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(block2(block1(h, c), c))
        return self.head(h).transpose(1, 2)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_unet(
    size: str | tuple[int, ...] | list[int],
    action_dim: int,
    cond_dim: int,
    **overrides,
) -> ConditionalUnet1D:
    """Build a U-Net from a size name (``tiny``, ``small``, ``chi``) or explicit ``down_dims``.

    ``cond_dim`` is the flattened observation-history width (``n_obs_steps * obs_dim``); 0 for an
    unconditional model.  ``overrides`` go to :class:`UNetConfig` (``step_embed_dim``,
    ``kernel_size``, ``n_groups``).
    """
    return ConditionalUnet1D(UNetConfig(action_dim=action_dim, cond_dim=cond_dim, **unet_kwargs(size), **overrides))


def unet_kwargs(size: str | Sequence[int]) -> dict[str, Any]:
    """The :class:`UNetConfig` settings of a size name (``tiny``, ``small``, ``chi``) or of explicit ``down_dims``."""
    if isinstance(size, str):
        if size not in UNET_SIZES:
            raise ValueError(f"unknown U-Net size {size!r}; known sizes: {sorted(UNET_SIZES)}")
        return {**UNET_SIZES[size], "size": size}
    return {"down_dims": tuple(size), "size": None}
