"""``load_demonstrations``: the one door to demonstration data, whatever its format.

    from asd_policy.data import load_demonstrations
    demos = load_demonstrations("data/reach_around.hdf5")
    demos.episodes[0].obs        # float32 [T, obs_dim], keys concatenated in demos.obs_keys order
    demos.episodes[0].actions    # float32 [T, action_dim]
    demos.train_names, demos.valid_names, demos.env_args, demos.task_name

A file is read as robomimic-format hdf5 (:mod:`~asd_policy.data.robomimic`), a directory as a LeRobot
v3.0 dataset root (``meta/info.json``, parquet data: :mod:`~asd_policy.data.lerobot`).
"""
from __future__ import annotations

import os
from typing import Sequence

from asd_policy.data.demos import Demonstrations
from asd_policy.data.lerobot import load_lerobot_dataset
from asd_policy.data.robomimic import load_robomimic

__all__ = ["load_demonstrations"]


def load_demonstrations(path: str | os.PathLike, obs_keys: Sequence[str] | None = None,
                        images: bool = True) -> Demonstrations:
    """Load every demo of a robomimic-format hdf5 file or a LeRobot v3.0 dataset directory (see module docstring).
    With ``images`` (default), camera frames are read too: ``episode.images["<camera>_image"]``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"demonstration file not found: {path!r}; create it with "
            f"`python scripts/collect.py task=<task> output={path}` or pass the path of a robomimic dataset "
            f"(or of a LeRobot v3.0 dataset directory)"
        )
    if os.path.isdir(path):  # a LeRobot v3.0 dataset root (parquet)
        return load_lerobot_dataset(path, obs_keys, images)
    return load_robomimic(path, obs_keys, images)
