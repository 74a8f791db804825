"""Observation histories: the last ``n_obs_steps`` observations of each environment, the only
observations anything keeps (the control loops, the real-time controller, the policy server's
sessions). A flat observation is one float32 buffer; a camera task's dict of modalities one buffer
per key, each in its own dtype (uint8 frames stay uint8).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["ObsHistory", "zero_history", "observation_of", "batch_size", "stack_histories", "concat_histories",
           "to_device"]


class ObsHistory:
    """The last ``n_obs_steps`` observations of each of ``batch`` environments.

    After ``reset(i, obs)`` every slot of element ``i`` holds ``obs`` (padding by repetition);
    ``push(i, obs)`` shifts in a new observation; ``get(idx)`` returns ``[len(idx), T, D]``.
    An environment whose observation is a dict of modalities (a camera task's ``"state"`` and
    ``"<camera>_image"``) gets one buffer per key, in its own dtype (uint8 frames stay uint8), and
    ``get`` returns a dict of ``[len(idx), T, ...]`` arrays; :meth:`like` builds either from a first
    observation. Only these ``n_obs_steps`` observations are ever kept.
    """

    def __init__(self, n_obs_steps: int, batch: int, obs_dim: int | None = None,
                 keys: dict[str, tuple[tuple[int, ...], Any]] | None = None):
        self.n_obs_steps = int(n_obs_steps)
        if (obs_dim is None) == (keys is None):
            raise ValueError("ObsHistory takes obs_dim (a flat observation) or keys (a dict of modalities), not both")
        self.keys = None if keys is None else list(keys)
        specs = {None: ((int(obs_dim),), np.float32)} if keys is None else keys
        self.buffers = {k: np.zeros((batch, self.n_obs_steps, *shape), dtype=dtype) for k, (shape, dtype) in specs.items()}

    @classmethod
    def like(cls, n_obs_steps: int, batch: int, obs: Any) -> "ObsHistory":
        """A history for observations shaped as ``obs`` (a flat vector, or a dict of arrays)."""
        if isinstance(obs, Mapping):
            keys = {}
            for k, v in obs.items():
                v = np.asarray(v)
                keys[str(k)] = (v.shape, np.uint8 if v.dtype == np.uint8 else np.float32)
            return cls(n_obs_steps, batch, keys=keys)
        return cls(n_obs_steps, batch, int(np.asarray(obs).reshape(-1).shape[0]))

    @property
    def buf(self) -> np.ndarray:
        """The flat history ``[batch, T, D]`` (a flat observation's only buffer)."""
        return self.buffers[None]

    def _parts(self, obs: Any):
        if self.keys is None:
            yield self.buffers[None], np.asarray(obs, dtype=np.float32).reshape(-1)
            return
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise ValueError(f"observation lacks {missing}; the history holds {self.keys}")
        for k in self.keys:
            yield self.buffers[k], np.asarray(obs[k])

    def reset(self, i: int, obs: Any) -> None:
        for buf, value in self._parts(obs):
            buf[i, :] = value

    def set(self, i: int, history: Any) -> None:
        """Element ``i``'s whole history ``[n_obs_steps, ...]`` (an array, or a dict of them), as given."""
        if self.keys is None:
            self.buffers[None][i] = history
            return
        for k in self.keys:
            self.buffers[k][i] = history[k]

    def push(self, i: int, obs: Any) -> None:
        for buf, value in self._parts(obs):
            buf[i, :-1] = buf[i, 1:]
            buf[i, -1] = value

    def get(self, idx: Sequence[int] | None = None) -> np.ndarray | dict[str, np.ndarray]:
        rows = slice(None) if idx is None else list(idx)
        if self.keys is None:
            return self.buffers[None][rows].copy()
        return {k: self.buffers[k][rows].copy() for k in self.keys}


def zero_history(space: Any, batch: int, n_obs_steps: int) -> np.ndarray | dict[str, np.ndarray]:
    """An all-zero history ``[batch, n_obs_steps, ...]`` for a gymnasium observation space (a Box, or
    a Dict of them, each in its own dtype)."""
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, Mapping):
        return {k: np.zeros((batch, n_obs_steps, *s.shape), dtype=s.dtype) for k, s in spaces.items()}
    return np.zeros((batch, n_obs_steps, int(np.prod(space.shape))), dtype=np.float32)


def observation_of(obs: Any, i: int) -> Any:
    """Env ``i``'s observation in a vector env's batched observation (an array, or a dict of arrays)."""
    return {k: v[i] for k, v in obs.items()} if isinstance(obs, Mapping) else obs[i]


def batch_size(obs_history: Any) -> int:
    """B of an observation history ``[B, T, ...]`` or a dict of them."""
    first = next(iter(obs_history.values())) if isinstance(obs_history, Mapping) else obs_history
    return int(np.shape(first)[0])


def stack_histories(histories: Sequence[Any]) -> Any:
    """Single-env histories ``[T, ...]`` (arrays, or dicts of them) stacked into a batch ``[B, T, ...]``."""
    if isinstance(histories[0], Mapping):
        return {k: np.stack([h[k] for h in histories]) for k in histories[0]}
    return np.stack(histories)


def concat_histories(histories: Sequence[Any]) -> Any:
    """Observation histories ``[b_i, T, ...]`` (arrays, or dicts of them) joined along the batch axis."""
    if isinstance(histories[0], Mapping):
        return {k: np.concatenate([h[k] for h in histories]) for k in histories[0]}
    return np.concatenate(histories)


def to_device(obs_history: Any, device: torch.device) -> Any:
    """The history as tensors on ``device``: float32 for a flat history; a dict keeps each dtype."""
    if isinstance(obs_history, Mapping):
        return {k: torch.as_tensor(v).to(device) for k, v in obs_history.items()}
    return torch.as_tensor(obs_history, dtype=torch.float32).to(device)
