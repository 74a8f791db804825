"""asd-policy's tasks as LeRobot envs, so that LeRobot's own evaluation loop runs on them::

    lerobot-eval --policy.path=<pretrained_model> --env.type=asd_envs --env.task=reach_around \\
        [--env.cameras='[top]' --env.image_size=84] [--env.episode_length=150] \\
        [--env.env_kwargs='{"max_speed": 0.3}'] --eval.n_episodes=50 --eval.batch_size=10

The env LeRobot steps is the task's own (``asd_envs.make_env``) with its observation given in LeRobot's
shape: a dict of ``agent_pos`` (the task's ``state_keys``: ``observation.state``), ``environment_state``
(the rest of the flat vector: ``observation.environment_state``) and, with cameras, ``pixels/<camera>``
(uint8 HxWx3: ``observation.images.<camera>``). That is the split and the naming
``asd_policy.data.lerobot_export`` writes, so a policy lerobot-train trained on one of our exported
datasets reads the env exactly as it read its training data.

This module is imported by every LeRobot CLI through the plugin (lerobot-record on a real robot too), so
it imports neither asd_envs (mujoco, robosuite) nor gymnasium until an asd_envs config is built or an
env is made.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

# and LeRobotObservation, the env's observation wrapper, built on first use (module __getattr__)
__all__ = ["ENV_TYPE", "GYM_NAMESPACE", "AsdEnvConfig", "lerobot_features", "lerobot_observation", "make_lerobot_env"]

ENV_TYPE = "asd_envs"  # --env.type; make_env substring-matches libero/metaworld, so never those words
GYM_NAMESPACE = "asd_lerobot"  # gymnasium ids asd_lerobot/<task>-v0: the task's env, observed as LeRobot reads it
DEFAULT_TASK = "reach_around"  # asd_envs.DEFAULT_TASK, spelled out so the module stays light to import
STATE, ENV_STATE, PIXELS = "agent_pos", "environment_state", "pixels"  # keys LeRobot's preprocess_observation reads
# make_env options this config sets itself; in env_kwargs they would contradict it
_OWN_OPTIONS = {"cameras": "--env.cameras", "image_size": "--env.image_size",
                "max_episode_steps": "--env.episode_length", "render_mode": "(always rgb_array)"}


@EnvConfig.register_subclass(ENV_TYPE)
@dataclass
class AsdEnvConfig(EnvConfig):
    """``--env.type=asd_envs``: one of ``asd_envs.list_tasks()`` as a LeRobot env.

    ``task``: the task (default reach_around). ``cameras``: cameras to observe (``asd_envs.get_task(task).cameras``;
    none by default: a low-dim policy). ``image_size``: side of the square camera images (default 84, with
    cameras only). ``episode_length``: the time limit in steps (default: the task's own). ``fps``: the task's
    control rate, filled in (a different value is refused: the simulator's rate is fixed). ``env_kwargs``:
    the task's own options (docs/tasks.md, e.g. ``terminate_on_success``, ``max_speed``).
    ``features`` / ``features_map`` are derived from these; they are not settings.
    """

    task: str | None = DEFAULT_TASK
    fps: int | None = None
    cameras: list[str] = field(default_factory=list)
    image_size: int | None = None
    episode_length: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = _task_spec(self.task)
        self.cameras = _checked_cameras(spec, self.cameras, self.image_size)
        if self.cameras and self.image_size is None:
            from asd_envs.cameras import DEFAULT_IMAGE_SIZE

            self.image_size = DEFAULT_IMAGE_SIZE
        self.episode_length = _checked_length(spec, self.episode_length)
        self.fps = _checked_fps(spec, self.fps)
        _check_env_kwargs(self.env_kwargs)
        self.features, self.features_map = lerobot_features(spec, self.cameras, self.image_size)

    @property
    def package_name(self) -> str:
        return "asd_envs"  # where the tasks live: what a user lacking them must install

    @property
    def gym_id(self) -> str:
        # Registered here, where it is read, because gym.make may run in a process that has only unpickled
        # this config (AsyncVectorEnv's workers; lerobot 0.6 starts them with forkserver): a registration
        # made while parsing the command line would not exist there.
        return _registered_id(self.task)

    @property
    def gym_kwargs(self) -> dict:
        return {"cameras": list(self.cameras), "image_size": self.image_size, "episode_length": self.episode_length,
                "env_kwargs": dict(self.env_kwargs), "render_mode": "rgb_array"}


# ---- the observation LeRobot reads -----------------------------------------------------------------------


def _state_width(spec) -> int:
    """Width of the robot's own state: the task's ``state_keys`` (all of the vector when it names none)."""
    keys = spec.state_keys or spec.obs_keys
    dims = dict(zip(spec.obs_keys, spec.obs_key_dims))
    return int(sum(dims[k] for k in keys))


def lerobot_features(spec, cameras: list[str], image_size: int | None) -> tuple[dict, dict]:
    """The env's ``features`` (keys of its observation dict, images HWC as LeRobot's env configs give them)
    and ``features_map`` (those keys -> the policy's feature names), for a task's ``TaskSpec``."""
    width = _state_width(spec)
    features = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(spec.action_dim,)),
                STATE: PolicyFeature(type=FeatureType.STATE, shape=(width,))}
    features_map = {ACTION: ACTION, STATE: OBS_STATE}
    if width < spec.obs_dim:
        features[ENV_STATE] = PolicyFeature(type=FeatureType.ENV, shape=(spec.obs_dim - width,))
        features_map[ENV_STATE] = OBS_ENV_STATE
    for cam in cameras:
        features[f"{PIXELS}/{cam}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(image_size, image_size, 3))
        features_map[f"{PIXELS}/{cam}"] = f"{OBS_IMAGES}.{cam}"  # as lerobot_export names a camera's frames
    return features, features_map


def lerobot_observation(obs: Any, state_width: int, cameras: tuple[str, ...]) -> dict:
    """One observation of ours (the flat vector, or with cameras the dict of ``state`` and ``<camera>_image``)
    as LeRobot's: ``agent_pos``, ``environment_state`` (when the task has one) and ``pixels`` {camera: frame}."""
    flat = obs["state"] if cameras else obs
    out = {STATE: flat[:state_width].copy()}
    if state_width < flat.shape[0]:
        out[ENV_STATE] = flat[state_width:].copy()
    if cameras:
        out[PIXELS] = {cam: obs[f"{cam}_image"] for cam in cameras}
    return out


def _observation_space(inner, state_width: int, cameras: tuple[str, ...]):
    from gymnasium import spaces

    flat = inner["state"] if cameras else inner

    def part(sl: slice) -> spaces.Box:
        return spaces.Box(flat.low[sl], flat.high[sl], dtype=flat.dtype)

    parts = {STATE: part(slice(0, state_width))}
    if state_width < flat.shape[0]:
        parts[ENV_STATE] = part(slice(state_width, None))
    if cameras:
        parts[PIXELS] = spaces.Dict({cam: inner[f"{cam}_image"] for cam in cameras})
    return spaces.Dict(parts)


@functools.cache
def _wrapper_class() -> type:
    """``LeRobotObservation``, built on first use so that importing this module imports no gymnasium; the module's
    ``__getattr__`` hands out this one class, so ``asd_env:LeRobotObservation`` (its wrapper spec, pickle) resolves."""
    import gymnasium as gym

    class LeRobotObservation(gym.ObservationWrapper):
        """A task's env (``asd_envs.make_env``) observed as LeRobot reads it (:func:`lerobot_observation`).
        ``task_description`` / ``task``: the task's one-line description, LeRobot's task text (``add_envs_task``)."""

        def __init__(self, env: gym.Env, spec, cameras: tuple[str, ...] = ()):
            super().__init__(env)
            self.state_width, self.cameras = _state_width(spec), tuple(cameras)
            self.observation_space = _observation_space(env.observation_space, self.state_width, self.cameras)
            self.task_description = self.task = spec.description or spec.name

        def observation(self, observation: Any) -> dict:
            return lerobot_observation(observation, self.state_width, self.cameras)

    LeRobotObservation.__module__, LeRobotObservation.__qualname__ = __name__, "LeRobotObservation"
    return LeRobotObservation


def __getattr__(name: str) -> Any:
    if name == "LeRobotObservation":
        return _wrapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_lerobot_env(task: str, cameras: list[str] | tuple[str, ...] = (), image_size: int | None = None,
                     episode_length: int | None = None, env_kwargs: dict | None = None,
                     render_mode: str | None = "rgb_array"):
    """The entry point of ``asd_lerobot/<task>-v0``: ``asd_envs.make_env`` (the task's TimeLimit, rendering,
    cameras) observed through ``LeRobotObservation``."""
    import asd_envs

    spec = _task_spec(task)
    options = dict(env_kwargs or {})
    if cameras:
        options.update(cameras=list(cameras), image_size=image_size)
    env = asd_envs.make_env(task, render_mode=render_mode, max_episode_steps=episode_length or spec.max_episode_steps,
                            **options)
    return _wrapper_class()(env, spec, tuple(cameras))


def _registered_id(task: str) -> str:
    """``asd_lerobot/<task>-v0``, registered with gymnasium on first use.

    Without gymnasium's OrderEnforcing wrapper or its own TimeLimit (the task's env has its own), so that
    with LeRobot's default ``disable_env_checker=True`` gym.make returns this module's env itself, whose
    ``task_description`` LeRobot then finds (it looks on the outermost wrapper only)."""
    from gymnasium.envs.registration import register, registry

    env_id = f"{GYM_NAMESPACE}/{task}-v0"
    if env_id not in registry:
        register(id=env_id, entry_point=f"{__name__}:make_lerobot_env", kwargs={"task": task}, order_enforce=False)
    return env_id


# ---- settings checks: one line naming the setting and the fix ------------------------------------------------


def _task_spec(task: str | None):
    import asd_envs

    if task not in asd_envs.list_tasks():
        raise ValueError(f"--env.task={task!r} is not an asd_envs task; use one of: {', '.join(asd_envs.list_tasks())}")
    return asd_envs.get_task(task)


def _checked_cameras(spec, cameras: Any, image_size: Any) -> list[str]:
    from asd_envs.cameras import DEFAULT_IMAGE_SIZE, check_cameras

    cameras = [] if cameras is None else cameras
    if not cameras and image_size is not None:
        example = spec.cameras[0] if spec.cameras else "<camera>"
        raise ValueError(f"--env.image_size={image_size!r} is set but no camera is: add --env.cameras='[{example}]' "
                         f"(task {spec.name!r} has {', '.join(spec.cameras) or 'none'}) or leave image_size unset")
    check_cameras(spec.name, cameras, spec.cameras, DEFAULT_IMAGE_SIZE if image_size is None else image_size,
                  field="--env.")
    return list(cameras)


def _checked_length(spec, length: Any) -> int:
    if length is None:
        return spec.max_episode_steps
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"--env.episode_length={length!r} is not valid; give a number of steps >= 1, or leave it "
                         f"unset for task {spec.name!r}'s own ({spec.max_episode_steps})")
    return length


def _checked_fps(spec, fps: Any) -> int:
    rate = spec.control_hz
    if not float(rate).is_integer():  # LeRobot's fps is an int; no task of ours has a fractional rate
        raise ValueError(f"task {spec.name!r} runs at {rate} Hz, which LeRobot's integer fps cannot state")
    if fps is not None and fps != rate:
        raise ValueError(f"--env.fps={fps!r}: task {spec.name!r} is simulated at {int(rate)} Hz, a fixed rate; "
                         f"leave --env.fps unset")
    return int(rate)


def _check_env_kwargs(env_kwargs: Any) -> None:
    if not isinstance(env_kwargs, dict):
        raise ValueError(f"--env.env_kwargs={env_kwargs!r} is not a dict; give the task's options as JSON, "
                         f"e.g. --env.env_kwargs='{{\"terminate_on_success\": false}}'")
    for key, setting in _OWN_OPTIONS.items():
        if key in env_kwargs:
            raise ValueError(f"--env.env_kwargs sets {key!r}, which this config sets itself; use {setting} instead")
