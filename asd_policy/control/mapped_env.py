"""The env wrapper behind ``task.obs_map``: a task's observation gathered into a policy's order
(:mod:`asd_policy.control.tasks` says which index; this module is the one that needs gymnasium)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

__all__ = ["MappedObservation", "mapped_env_fn"]


class MappedObservation(gym.ObservationWrapper):
    """The env's flat observation gathered at ``index`` (the policy's feature order); with a camera
    task's dict observation, its ``"state"`` so gathered and the frames as they are."""

    def __init__(self, env: gym.Env, index: np.ndarray):
        super().__init__(env)
        self.index = np.asarray(index, dtype=np.int64)
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict):
            self.observation_space = gym.spaces.Dict({**space.spaces, "state": self._gathered(space.spaces["state"])})
        else:
            self.observation_space = self._gathered(space)

    def _gathered(self, space: gym.spaces.Box) -> gym.spaces.Box:
        return gym.spaces.Box(space.low[..., self.index], space.high[..., self.index], dtype=space.dtype)

    def observation(self, observation: Any) -> Any:
        if isinstance(observation, Mapping):
            return {**observation, "state": np.asarray(observation["state"])[..., self.index]}
        return np.asarray(observation)[..., self.index]


def mapped_env_fn(env_fn: Callable[..., Any], index: np.ndarray) -> Callable[..., Any]:
    """An env factory like ``env_fn`` whose envs are wrapped in :func:`MappedObservation`."""

    def make(*args: Any, **kwargs: Any) -> Any:
        return MappedObservation(env_fn(*args, **kwargs), index)

    return make
