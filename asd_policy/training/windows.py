"""Training windows of demonstration episodes and the order in which batches visit them."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["WindowDataset", "EpochBatches"]


class WindowDataset:
    """All fixed-length windows of a set of episodes, held as tensors (low-dim data is small).

    As diffusion_policy's ``SequenceSampler``: each window covers ``horizon`` steps; windows may
    start ``pad_before = n_obs_steps - 1`` steps before an episode and end ``pad_after =
    n_action_steps - 1`` steps after it, the missing steps repeating the first / last step.
    """

    def __init__(self, episodes, horizon: int, pad_before: int, pad_after: int, image_keys: tuple[str, ...] = ()):
        episodes = [e for e in episodes if len(e) > 0]
        if not episodes:
            raise ValueError("no (non-empty) episodes to make training windows from")
        self.obs = torch.from_numpy(np.concatenate([e.obs for e in episodes]).astype(np.float32))
        # camera frames stay uint8 ([frames, H, W, 3]): a quarter of float32's memory
        self.images = {k: torch.from_numpy(np.concatenate([e.images[k] for e in episodes])) for k in image_keys}
        self.actions = torch.from_numpy(np.concatenate([e.actions for e in episodes]).astype(np.float32))
        rows, offset = [], 0
        ar = np.arange(horizon)
        for e in episodes:
            T = len(e)
            starts = np.arange(-pad_before, T - horizon + pad_after + 1)
            if len(starts):
                rows.append(np.clip(starts[:, None] + ar[None, :], 0, T - 1) + offset)
            offset += T
        if not rows:
            raise ValueError(
                f"episodes are too short for horizon={horizon} with padding {pad_before}/{pad_after}"
            )
        self.index = torch.from_numpy(np.concatenate(rows).astype(np.int64))  # [N, horizon] rows
        self.horizon = horizon

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device) -> "WindowDataset":
        self.obs, self.actions, self.index = self.obs.to(device), self.actions.to(device), self.index.to(device)
        self.images = {k: v.to(device) for k, v in self.images.items()}
        return self

    def batch(self, ids: Tensor, n_obs_steps: int) -> tuple[Tensor, Tensor]:
        """(obs [B, n_obs_steps, obs_dim], actions [B, horizon, action_dim]) for window ids."""
        rows = self.index[ids]
        return self.obs[rows[:, :n_obs_steps]], self.actions[rows]

    def batch_images(self, ids: Tensor, n_obs_steps: int) -> dict[str, Tensor]:
        """Each camera's frames ``[B, n_obs_steps, H, W, 3]`` (uint8) for window ids, aligned with :meth:`batch`."""
        rows = self.index[ids][:, :n_obs_steps]
        return {k: v[rows] for k, v in self.images.items()}


class EpochBatches:
    """Window ids in shuffled epochs; rank r of w takes the r-th of each w consecutive batches; a pure function of step.

    Batch ``k`` is determined by (seed, k) alone, so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.b, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.per_epoch = max(1, n // (batch_size * world_size))  # drop the last partial batch
        self._epoch, self._perm = -1, None

    def ids(self, step: int) -> Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            if len(perm) < self.b * self.world:  # tiny datasets: repeat to fill one batch
                perm = perm.repeat(math.ceil(self.b * self.world / len(perm)))
            self._epoch, self._perm = epoch, perm
        start = k * self.b * self.world + self.rank * self.b
        return self._perm[start : start + self.b]
