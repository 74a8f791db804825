"""Per-dimension normalisers, stored as plain numbers (JSON) in checkpoints.

* :class:`MinMaxNormalizer`: our own policies' min-max map to [-1, 1].
* :class:`AffineNormalizer`: any per-dimension affine map and its own inverse, e.g. a LeRobot
  policy's MEAN_STD / MIN_MAX / IDENTITY statistics per feature (``asd_policy.policy.lerobot``).

Both have ``normalize``, ``unnormalize``, ``dim`` and a ``to_dict`` that
:func:`normalizer_from_dict` reads back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MinMaxNormalizer", "AffineNormalizer", "normalizer_from_dict"]


class MinMaxNormalizer(nn.Module):
    """Maps each dimension affinely from its data range ``[min, max]`` to ``[-1, 1]``.

    A dimension whose range is below ``eps`` (constant in the data) is only shifted so that its
    value maps to 0, as diffusion_policy does, instead of being blown up.

    The statistics are non-persistent buffers: they move with ``.to(device)`` but live in the
    checkpoint's JSON (:meth:`to_dict`), not in its weight file.
    """

    def __init__(self, data_min, data_max, eps: float = 1e-4):
        super().__init__()
        # round to float32 first, so a normaliser rebuilt from its JSON is bit-identical
        lo = torch.as_tensor(np.asarray(data_min, dtype=np.float32).astype(np.float64)).reshape(-1)
        hi = torch.as_tensor(np.asarray(data_max, dtype=np.float32).astype(np.float64)).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"normaliser min and max differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("normaliser statistics must be finite")
        if (hi < lo).any():
            raise ValueError("normaliser max must be >= min in every dimension")
        self.eps = float(eps)
        span = hi - lo
        flat = span < eps
        scale = torch.where(flat, torch.ones_like(span), 2.0 / span.clamp_min(eps))
        offset = torch.where(flat, -(hi + lo) / 2, -1.0 - scale * lo)
        self.register_buffer("data_min", lo.float(), persistent=False)
        self.register_buffer("data_max", hi.float(), persistent=False)
        self.register_buffer("scale", scale.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.scale.numel())

    @classmethod
    def fit(cls, data, eps: float = 1e-4) -> "MinMaxNormalizer":
        """Statistics of ``data`` (``[..., dim]``, numpy or torch) over all leading axes."""
        arr = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
        arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
        if arr.shape[0] == 0:
            raise ValueError("cannot fit a normaliser to an empty array")
        return cls(arr.min(axis=0), arr.max(axis=0), eps=eps)

    def normalize(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) + self.offset.to(x.dtype)

    def unnormalize(self, y: Tensor) -> Tensor:
        return (y - self.offset.to(y.dtype)) / self.scale.to(y.dtype)

    def to_dict(self) -> dict:
        return {"min": self.data_min.tolist(), "max": self.data_max.tolist(), "eps": self.eps}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxNormalizer":
        return cls(d["min"], d["max"], eps=d.get("eps", 1e-4))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class AffineNormalizer(nn.Module):
    """``normalize(x) = x * scale + offset`` and ``unnormalize(y) = y * unscale + unoffset``, per dimension.

    The inverse is stored, not derived, because some normalisers are not exactly inverted by their
    own unnormaliser: LeRobot's MEAN_STD divides by ``std + eps`` but multiplies back by ``std``.
    ``parts`` records, for the metadata, which named feature spans which dimensions and how it is
    normalised (``[{"name", "dim", "mode"}, ...]``).
    """

    def __init__(self, scale, offset, unscale, unoffset, parts: list[dict] | None = None):
        super().__init__()
        arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (scale, offset, unscale, unoffset)]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"normaliser scale, offset, unscale and unoffset differ in shape: {[a.shape for a in arrays]}")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("normaliser coefficients must be finite")
        if (arrays[0] == 0).any() or (arrays[2] == 0).any():
            raise ValueError("normaliser scale and unscale must be non-zero in every dimension")
        self.parts = [dict(p) for p in parts or []]
        if self.parts and sum(int(p["dim"]) for p in self.parts) != arrays[0].size:
            raise ValueError(f"normaliser parts span {sum(int(p['dim']) for p in self.parts)} dimensions, not {arrays[0].size}")
        for name, a in zip(("scale", "offset", "unscale", "unoffset"), arrays):
            self.register_buffer(name, torch.as_tensor(a, dtype=torch.float32), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.scale.numel())

    @classmethod
    def identity(cls, dim: int) -> "AffineNormalizer":
        return cls(np.ones(dim), np.zeros(dim), np.ones(dim), np.zeros(dim))

    @classmethod
    def concat(cls, normalizers: list["AffineNormalizer"]) -> "AffineNormalizer":
        """One normaliser over the concatenation of the inputs' dimensions, in order."""
        cat = {k: np.concatenate([getattr(n, k).double().numpy() for n in normalizers]) for k in ("scale", "offset", "unscale", "unoffset")}
        return cls(**cat, parts=[p for n in normalizers for p in n.parts])

    def normalize(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) + self.offset.to(x.dtype)

    def unnormalize(self, y: Tensor) -> Tensor:
        return y * self.unscale.to(y.dtype) + self.unoffset.to(y.dtype)

    def to_dict(self) -> dict:
        d = {"kind": "affine", **{k: getattr(self, k).tolist() for k in ("scale", "offset", "unscale", "unoffset")}}
        return {**d, "parts": self.parts} if self.parts else d

    @classmethod
    def from_dict(cls, d: dict) -> "AffineNormalizer":
        return cls(d["scale"], d["offset"], d["unscale"], d["unoffset"], d.get("parts"))

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + (f", parts={[p['name'] for p in self.parts]}" if self.parts else "")


def normalizer_from_dict(d: dict) -> MinMaxNormalizer | AffineNormalizer:
    """The normaliser a ``to_dict()`` describes (dicts without a ``kind`` are min-max: older checkpoints)."""
    kind = d.get("kind", "minmax")
    if kind == "affine":
        return AffineNormalizer.from_dict(d)
    if kind == "minmax":
        return MinMaxNormalizer.from_dict(d)
    raise ValueError(f"unknown normaliser kind {kind!r}; known kinds: 'minmax', 'affine'")
