"""Demonstrations as every reader returns them: episodes of flat observations, actions and camera
frames, with the file's observation keys, env metadata and train / validation split."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Episode", "Demonstrations"]


@dataclass
class Episode:
    name: str
    obs: np.ndarray  # float32 [T, obs_dim]
    actions: np.ndarray  # float32 [T, action_dim]
    # camera frames, uint8 [T, H, W, 3] per "<camera>_image" key; apart from obs, which the state policy reads
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class Demonstrations:
    path: str
    episodes: list[Episode]
    obs_keys: tuple[str, ...]
    obs_key_dims: tuple[int, ...]
    env_args: dict
    task_name: str | None
    train_names: list[str]
    valid_names: list[str]
    masks: dict[str, list[str]] = field(default_factory=dict)
    image_keys: tuple[str, ...] = ()  # the "<camera>_image" keys every episode's images hold

    @property
    def obs_dim(self) -> int:
        return int(sum(self.obs_key_dims))

    @property
    def action_dim(self) -> int:
        return int(self.episodes[0].actions.shape[1])

    @property
    def num_samples(self) -> int:
        return int(sum(len(e) for e in self.episodes))

    def episode(self, name: str) -> Episode:
        for e in self.episodes:
            if e.name == name:
                return e
        raise KeyError(f"no episode {name!r} in {self.path}")

    @property
    def train_episodes(self) -> list[Episode]:
        names = set(self.train_names)
        return [e for e in self.episodes if e.name in names]

    @property
    def valid_episodes(self) -> list[Episode]:
        names = set(self.valid_names)
        return [e for e in self.episodes if e.name in names]
