"""Writer for demonstrations in robomimic's hdf5 layout.

Layout written (the one robomimic's ``SequenceDataset`` and the real robomimic datasets use)::

    data/                       attrs: total (int), env_args (JSON str), asd_task, asd_obs_keys (JSON list)
      demo_0/                   attrs: num_samples (int)[, model_file (robosuite MJCF xml)]
        obs/<key>               [T, ...]  observation at step t; camera frames as obs/<camera>_image,
                                          uint8 [T, H, W, 3] (gzip-compressed), as robomimic's image datasets
        next_obs/<key>          [T, ...]  observation after action t
        actions                 [T, A]
        rewards                 [T]
        dones                   [T]       1 on the last step of the episode
        states                  [T, S]    simulator state before action t (for replay / reset_to)
      demo_1/ ...
    mask/train, mask/valid      byte-string arrays of demo names (robomimic filter keys)

``asd_task`` / ``asd_obs_keys`` are extra attributes (robomimic ignores them) that record the
task and the default observation key order for ``asd_policy.data.load_demonstrations``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np


class RobomimicWriter:
    def __init__(
        self,
        path: str,
        env_args: Mapping[str, Any],
        task_name: str | None,
        obs_keys: Sequence[str],
        valid_fraction: float = 0.1,
        split_seed: int = 0,
    ):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self.path = path
        self.env_args = dict(env_args)
        self.task_name = task_name
        self.obs_keys = tuple(obs_keys)
        self.valid_fraction = float(valid_fraction)
        self.split_seed = int(split_seed)
        self._tmp = path + ".part"
        self._f = h5py.File(self._tmp, "w", track_order=True)
        self._data = self._f.create_group("data", track_order=True)
        self.names: list[str] = []
        self.total = 0

    def _ds(self, group: h5py.Group, name: str, arr: np.ndarray) -> None:
        if arr.dtype == np.uint8 and arr.ndim == 4:  # camera frames [T, H, W, 3]: rendered scenes compress well
            group.create_dataset(name, data=arr, track_times=False, chunks=(1, *arr.shape[1:]),
                                 compression="gzip", compression_opts=4)
            return
        group.create_dataset(name, data=arr, track_times=False)

    def add_episode(
        self,
        obs: Sequence[Mapping[str, np.ndarray]],
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        states: np.ndarray | None = None,
        model_file: str | None = None,
    ) -> str:
        """``obs``: T + 1 observation dicts (the last one is the observation after the final
        action); ``actions`` [T, A]; ``rewards``/``dones`` [T]; ``states`` [T, S]."""
        actions = np.asarray(actions, dtype=np.float64)
        T = len(actions)
        if len(obs) != T + 1:
            raise ValueError(f"need T + 1 = {T + 1} observations for {T} actions, got {len(obs)}")
        name = f"demo_{len(self.names)}"
        g = self._data.create_group(name, track_order=True)
        og, ng = g.create_group("obs", track_order=True), g.create_group("next_obs", track_order=True)
        for key in obs[0]:
            arr = np.stack([np.asarray(o[key]) for o in obs])
            self._ds(og, key, arr[:-1])
            self._ds(ng, key, arr[1:])
        self._ds(g, "actions", actions)
        self._ds(g, "rewards", np.asarray(rewards, dtype=np.float64).reshape(T))
        self._ds(g, "dones", np.asarray(dones, dtype=np.int64).reshape(T))
        if states is not None:
            self._ds(g, "states", np.asarray(states, dtype=np.float64).reshape(T, -1))
        g.attrs["num_samples"] = T
        if model_file is not None:
            g.attrs["model_file"] = model_file
        self.names.append(name)
        self.total += T
        return name

    def close(self) -> None:
        """Write the attributes and train/valid masks, then move the file into place (a crash
        mid-collection leaves only ``<output>.part``, never a truncated ``<output>``)."""
        if self._f is None:
            return
        self._data.attrs["total"] = self.total
        self._data.attrs["env_args"] = json.dumps(self.env_args, indent=4)
        if self.task_name is not None:
            self._data.attrs["asd_task"] = self.task_name
        self._data.attrs["asd_obs_keys"] = json.dumps(list(self.obs_keys))
        n = len(self.names)
        n_valid = int(round(self.valid_fraction * n)) if n > 1 else 0
        perm = np.random.default_rng(self.split_seed).permutation(n)
        valid = sorted(perm[:n_valid].tolist())
        train = sorted(perm[n_valid:].tolist())
        mask = self._f.create_group("mask")
        mask.create_dataset("train", data=np.array([f"demo_{i}" for i in train], dtype="S"), track_times=False)
        mask.create_dataset("valid", data=np.array([f"demo_{i}" for i in valid], dtype="S"), track_times=False)
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()
