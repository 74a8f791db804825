"""Per-dimension min-max normalisation to [-1, 1], stored as plain numbers (JSON) in checkpoints."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MinMaxNormalizer"]


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
