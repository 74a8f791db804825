"""``obs_map``: which of a task's observation keys feed each named feature of a policy.

A LeRobot policy reads named features (``observation.state``, ``observation.environment_state``)
concatenated in its own order; a task emits one flat vector concatenating its ``obs_keys``. When
the two line up (a policy trained on the task's own exported demos) nothing is needed. When they
do not, the task config declares the mapping::

    python scripts/eval.py checkpoint=<lerobot dir> task=lift \
        '+task.obs_map={observation.state: [robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos], observation.environment_state: [object]}'

and every env of the run is wrapped so that its observation is the policy's flat vector.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

from asd_policy.config import ConfigError, did_you_mean

__all__ = ["obs_map_index", "key_index", "MappedObservation", "mapped_env_fn", "policy_env_fn", "reads_other_keys"]


def obs_map_index(obs_map: Mapping[str, Sequence[str]], spec: Any, features: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
    """The index into the task's flat observation that gives the policy's flat vector.

    ``spec`` is the task's :class:`asd_envs.TaskSpec` (``obs_keys``, ``obs_slices``); ``features``
    the policy's ``config.obs_features`` (``[{"name", "dim"}, ...]``). Every feature needs a source
    and every source key must exist with the widths adding up: otherwise one ConfigError saying which.
    """
    if not features:
        raise ConfigError("task.obs_map maps the named features of a LeRobot policy; this policy names none (its "
                          "observation is the task's flat vector): drop task.obs_map")
    names = [str(f["name"]) for f in features]
    unknown = [k for k in obs_map if k not in names]
    if unknown:
        raise ConfigError(f"task.obs_map names {unknown}, which the policy does not read"
                          f"{did_you_mean(unknown[0], names)}; its features are {names}")
    slices = spec.obs_slices()
    index = []
    for f in features:
        name, dim = str(f["name"]), int(f["dim"])
        keys = obs_map.get(name)
        if not keys:
            raise ConfigError(f"policy feature {name!r} has no source in task.obs_map; map it to keys of task "
                              f"{spec.name!r}: {list(spec.obs_keys)}")
        keys = [keys] if isinstance(keys, str) else [str(k) for k in keys]
        missing = [k for k in keys if k not in slices]
        if missing:
            raise ConfigError(f"task.obs_map[{name!r}] names {missing}, not observation keys of task {spec.name!r}"
                              f"{did_you_mean(missing[0], list(slices))}; its keys are {list(spec.obs_keys)}")
        part = np.concatenate([np.arange(slices[k].start, slices[k].stop) for k in keys])
        if part.size != dim:
            widths = {k: slices[k].stop - slices[k].start for k in keys}
            raise ConfigError(f"task.obs_map[{name!r}] = {keys} has {part.size} values {widths}; the policy's "
                              f"{name!r} has {dim}")
        index.append(part)
    return np.concatenate(index)


def key_index(keys: Sequence[str], spec: Any) -> np.ndarray:
    """The index into the task's flat observation that gathers ``keys`` (e.g. a camera policy's
    agent-only ``obs_keys``), in that order; a ConfigError naming a key the task lacks."""
    slices = spec.obs_slices()
    missing = [k for k in keys if k not in slices]
    if missing:
        raise ConfigError(f"the policy reads observation keys {missing}, which task {spec.name!r} lacks"
                          f"{did_you_mean(missing[0], list(slices))}; its keys are {list(spec.obs_keys)}")
    return np.concatenate([np.arange(slices[k].start, slices[k].stop) for k in keys])


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


def policy_env_fn(task: Any, spec: Any, policy: Any, env_fn_for: Callable[[dict], Callable[..., Any]]) -> Callable[..., Any]:
    """The env factory ``policy`` runs in on ``task`` (a TaskConfig; ``spec`` its TaskSpec).

    ``env_fn_for(make_env keyword arguments)`` makes the task's env factory. A camera policy gets
    the task's cameras (``task.env_overrides()``), a state policy the state env even on a camera
    task (no rendering to pay for). The observation is gathered in the policy's order:
    ``task.obs_map`` for a policy's named features, or the policy's own ``obs_keys`` where they are
    not the task's (a camera policy reads the robot's own state). A ConfigError names what does not fit.
    """
    config = getattr(policy, "config", None)
    env_fn = env_fn_for(task.env_overrides() if getattr(config, "image_features", None) else dict(task.env_kwargs))
    if task.obs_map:
        return mapped_env_fn(env_fn, obs_map_index(task.obs_map, spec, getattr(config, "obs_features", None)))
    keys = getattr(config, "obs_keys", None)
    if reads_other_keys(keys, spec):
        return mapped_env_fn(env_fn, key_index(list(keys), spec))
    return env_fn


def reads_other_keys(keys: Sequence[str] | None, spec: Any) -> bool:
    """Whether a policy recording ``keys`` reads other observation keys than the task's (None: the task's)."""
    return bool(keys) and list(keys) != list(spec.obs_keys)
