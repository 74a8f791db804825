"""A task as the methods see it: :class:`TaskConfig` (which env, its cameras) and the env a policy
runs in on it (:func:`policy_env_fn`).

``obs_map``: which of a task's observation keys feed each named feature of a policy.

A LeRobot policy reads named features (``observation.state``, ``observation.environment_state``)
concatenated in its own order; a task emits one flat vector concatenating its ``obs_keys``. When
the two line up (a policy trained on the task's own exported demos) nothing is needed. When they
do not, the task config declares the mapping::

    python scripts/eval.py checkpoint=<lerobot dir> task=lift \
        '+task.obs_map={observation.state: [robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos], observation.environment_state: [object]}'

and every env of the run is wrapped so that its observation is the policy's flat vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from asd_policy.core.config import ConfigError, did_you_mean

__all__ = ["TaskConfig", "obs_map_index", "key_index", "policy_env_fn", "reads_other_keys"]


@dataclass
class TaskConfig:
    """Which environment: a name known to ``asd_envs`` and keyword overrides for ``make_env``."""

    name: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # A LeRobot policy's feature -> the task's observation keys feeding it, in order (asd_policy.control.tasks);
    # empty: the task's flat vector is the policy's as it is.
    obs_map: dict[str, list[str]] = field(default_factory=dict)
    # Cameras rendered next to the state (names from asd_envs.get_task(name).cameras); empty: state only.
    # With cameras the env's observation is a Dict: "state" and one "<camera>_image" per camera.
    cameras: list[str] = field(default_factory=list)
    # Side of the square camera images in pixels; None: the renderer's default,
    # asd_envs.cameras.DEFAULT_IMAGE_SIZE (84, as robomimic's image datasets), filled in with cameras.
    image_size: int | None = None

    def __post_init__(self) -> None:
        self.env_kwargs = dict(self.env_kwargs or {})
        if not isinstance(self.obs_map or {}, Mapping):
            raise ConfigError(f"task.obs_map must map feature names to lists of observation keys, got {self.obs_map!r}")
        self.obs_map = {str(k): [v] if isinstance(v, str) else [str(x) for x in v] for k, v in (self.obs_map or {}).items()}
        self._check_cameras()

    def _check_cameras(self) -> None:
        if isinstance(self.cameras, str):  # a bare name where a list belongs: say so (check_cameras would too)
            raise ConfigError(f"task.cameras={self.cameras!r} is a string; give a list, e.g. task.cameras=[{self.cameras}]")
        self.cameras = [str(c) for c in self.cameras or []]
        for key in ("cameras", "image_size"):
            if key in self.env_kwargs:
                raise ConfigError(f"task.env_kwargs.{key} is set; set task.{key} instead (it is passed to make_env)")
        if not self.cameras and self.image_size is None:
            return  # state only: no need to import the simulators
        try:  # the task's camera names; a training-only install (no gymnasium / mujoco) cannot check them
            import asd_envs
            from asd_envs.cameras import DEFAULT_IMAGE_SIZE, check_cameras
        except ImportError:
            return
        if self.cameras and self.image_size is None:
            self.image_size = DEFAULT_IMAGE_SIZE
        known = self.name in asd_envs.list_tasks()
        if self.cameras and not known:
            raise ConfigError(f"task.cameras needs a task known to asd_envs; task.name={self.name!r} is not one "
                              f"(known: {', '.join(asd_envs.list_tasks())})")
        available = asd_envs.get_task(self.name).cameras if known else ()
        try:
            check_cameras(str(self.name), self.cameras, available, self.image_size, field="task.")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def default_checkpoint(self) -> str | None:
        """The shipped checkpoint for this task: ``checkpoints/<name>``, ``checkpoints/<name>_image`` with cameras."""
        return None if self.name is None else f"checkpoints/{self.name}{'_image' if self.cameras else ''}"

    def env_overrides(self) -> dict[str, Any]:
        """The keyword arguments for ``asd_envs.make_env(name, ...)``: ``env_kwargs`` plus the cameras, if any."""
        if not self.cameras:
            return dict(self.env_kwargs)
        size = {} if self.image_size is None else {"image_size": self.image_size}
        return {**self.env_kwargs, "cameras": list(self.cameras), **size}


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


def policy_env_fn(task: Any, spec: Any, policy: Any, env_fn_for: Callable[[dict], Callable[..., Any]]) -> Callable[..., Any]:
    """The env factory ``policy`` runs in on ``task`` (a TaskConfig; ``spec`` its TaskSpec).

    ``env_fn_for(make_env keyword arguments)`` makes the task's env factory. A camera policy gets
    the task's cameras (``task.env_overrides()``), a state policy the state env even on a camera
    task (no rendering to pay for). The observation is gathered in the policy's order:
    ``task.obs_map`` for a policy's named features, or the policy's own ``obs_keys`` where they are
    not the task's (a camera policy reads the robot's own state). A ConfigError names what does not fit.
    """
    from asd_policy.control.mapped_env import (
        mapped_env_fn,  # gymnasium, only where an env is made
    )

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
