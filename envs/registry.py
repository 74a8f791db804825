"""Task registry: one name -> one gymnasium env with a flat low-dim observation.

Every task is described by a frozen :class:`TaskSpec` (observation keys in concatenation order,
dimensions, control rate, episode length). The env factories are imported lazily so that the
own MuJoCo task works without robosuite / robomimic / gymnasium-robotics installed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task.

    ``obs_keys`` is the order in which the per-key arrays are concatenated into the flat
    observation; ``obs_key_dims`` gives each key's width (same order). ``state_keys``, the leading
    keys that describe the agent itself, are a LeRobot export's ``observation.state`` and the rest its
    ``observation.environment_state`` (empty: every key is the state).
    """

    name: str
    obs_keys: tuple[str, ...]
    obs_key_dims: tuple[int, ...]
    action_dim: int
    control_hz: float
    max_episode_steps: int
    family: str  # "mujoco" (own MJCF), "robomimic" (robosuite via robomimic), "gymnasium_robotics"
    description: str = ""
    entry_point: str = ""  # "module:function" building the unwrapped env from (spec, **overrides)
    expert_entry_point: str = ""  # "module:Class" of the scripted expert
    state_keys: tuple[str, ...] = ()  # a prefix of obs_keys: the agent's own state
    cameras: tuple[str, ...] = ()  # cameras make_env(cameras=[...]) can render (asd_envs.cameras), first the default
    env_kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def obs_dim(self) -> int:
        return int(sum(self.obs_key_dims))

    def obs_slices(self) -> dict[str, slice]:
        """Where each key lives in the flat observation."""
        out, start = {}, 0
        for key, dim in zip(self.obs_keys, self.obs_key_dims):
            out[key] = slice(start, start + dim)
            start += dim
        return out


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    _TASKS[spec.name] = spec


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(task_name: str) -> TaskSpec:
    try:
        return _TASKS[task_name]
    except KeyError:
        raise ValueError(
            f"unknown task {task_name!r}; known tasks: {', '.join(list_tasks())}"
        ) from None


def _load(entry_point: str) -> Callable[..., Any]:
    module, _, attr = entry_point.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_env(task_name: str, **overrides: Any) -> gym.Env:
    """Build the task's env: flat float32 Box observation (keys in ``get_task(name).obs_keys``
    order), Box action in [-1, 1], ``info["is_success"]`` on every step, wrapped in a TimeLimit.

    ``overrides`` go to the task's constructor (e.g. ``render_mode``, ``max_episode_steps``,
    ``render_size``; see docs/tasks.md for each task's options), except ``cameras`` (names from
    ``TaskSpec.cameras``), ``image_size`` (default 84) and ``camera_reflections`` (default False:
    frames drawn without planar reflections, 2.6x faster for robosuite's scenes on a CPU): with
    cameras, the observation is a ``Dict`` of ``"state"`` (the flat vector) and ``"<camera>_image"``
    (uint8 HxWx3) per camera.
    """
    spec = get_task(task_name)
    max_steps = int(overrides.pop("max_episode_steps", spec.max_episode_steps))
    return gym.wrappers.TimeLimit(_build(spec, overrides), max_episode_steps=max_steps)


def _build(spec: TaskSpec, overrides: dict[str, Any]) -> gym.Env:
    """The task's env from its entry point, wrapped in CameraObservation when cameras are asked for."""
    from .cameras import check_cameras

    cameras, image_size, reflections = _pop_cameras(overrides)
    check_cameras(spec.name, cameras, spec.cameras, image_size)  # before the (slow) simulator starts
    return _with_cameras(_load(spec.entry_point)(spec, **overrides), spec.name, cameras, image_size, reflections)


def _pop_cameras(overrides: dict[str, Any]) -> tuple[list[str], Any, bool]:
    """Take ``cameras``, ``image_size`` and ``camera_reflections`` out of an env's keyword arguments
    (they are the wrapper's)."""
    from .cameras import DEFAULT_IMAGE_SIZE

    return (list(overrides.pop("cameras", None) or []), overrides.pop("image_size", DEFAULT_IMAGE_SIZE),
            bool(overrides.pop("camera_reflections", False)))


def _with_cameras(env: gym.Env, name: str, cameras: list[str], image_size: Any, reflections: bool = False) -> gym.Env:
    from .cameras import CameraObservation

    return CameraObservation(env, name, cameras, image_size, reflections) if cameras else env


def make_expert(task_name: str, env: gym.Env, rng: Any = None):
    """Scripted expert for ``task_name`` acting in ``env`` (the env returned by ``make_env``).

    ``rng``: a ``numpy.random.Generator`` or an int seed; it drives the expert's randomised
    choices (mode, approach path, speed). The expert is used as::

        expert = make_expert("reach_around", env, rng=0)
        obs, info = env.reset(seed=0); expert.reset()
        action = expert.act(obs)          # reads privileged state from env.unwrapped
    """
    import numpy as np

    spec = get_task(task_name)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return _load(spec.expert_entry_point)(env, rng)


def make_env_from_metadata(env_meta: dict, obs_keys=None, max_episode_steps: int | None = None,
                           **overrides: Any) -> gym.Env:
    """Env from robomimic env metadata (``data.attrs["env_args"]`` of a robomimic dataset, or of
    a file written by our collector). robosuite envs (type 1) of any name are supported (e.g.
    ``TwoArmTransport``, ``ToolHang``), with robosuite 1.4-style controller configs converted;
    files from our collector (``asd_task`` recorded) rebuild that task with the stored kwargs.
    ``cameras`` / ``image_size`` add camera observations as in :func:`make_env`.
    ``obs_keys`` default to robomimic's low-dim keys for every robot plus ``object``."""
    meta = dict(env_meta)
    task = meta.get("asd_task")
    if task is not None and task in _TASKS and _TASKS[task].family != "robomimic":
        kwargs = dict(meta.get("env_kwargs", {}))
        kwargs.update(overrides)
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        return make_env(task, **kwargs)
    if meta.get("type") != 1:
        raise ValueError(
            f"cannot build an env from metadata of type {meta.get('type')!r} "
            f"(env_name {meta.get('env_name')!r}); supported: robosuite (type 1) and asd_envs tasks"
        )
    from .robomimic_tasks import HORIZONS, RobomimicEnv

    cameras, image_size, reflections = _pop_cameras(overrides)  # any of robosuite's cameras in the scene (env.CAMERAS)
    env = RobomimicEnv(meta["env_name"], env_meta=meta, obs_keys=obs_keys, **overrides)
    env = _with_cameras(env, meta["env_name"], cameras, image_size, reflections)
    steps = max_episode_steps or HORIZONS.get(meta["env_name"], 400)
    return gym.wrappers.TimeLimit(env, max_episode_steps=steps)


def _gym_entry(task_name: str, **overrides: Any) -> gym.Env:
    """Entry point of the ``asd_envs/<task>-v0`` gymnasium ids (gymnasium adds the TimeLimit)."""
    return _build(get_task(task_name), overrides)


def register_gymnasium_ids() -> None:
    """Make every task available as ``gymnasium.make("asd_envs/<task>-v0")`` as well."""
    for name, spec in _TASKS.items():
        env_id = f"asd_envs/{name}-v0"
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="asd_envs.registry:_gym_entry",
                max_episode_steps=spec.max_episode_steps,
                kwargs={"task_name": name},
            )
