"""robomimic tasks (``lift``, ``can``, ``square``) behind the gymnasium interface.

The simulator is created by robomimic's own env utilities from env metadata
(``EnvUtils.create_env_from_metadata`` -> ``EnvRobosuite`` over robosuite 1.5.2), exactly as
robomimic does for rollouts; compatibility measures live in :mod:`asd_envs.compat`.

Defaults follow robomimic's benchmark: Panda, OSC_POSE (delta end-effector pose + gripper,
7-dim action in [-1, 1]), 20 Hz, sparse reward, robomimic's low-dim observation keys
``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw), ``robot0_gripper_qpos`` (2), ``object``
(10 for lift, 14 for can / square), horizon 400 (robomimic's rollout horizon).

The env metadata stored in a robomimic dataset (``data.attrs["env_args"]``, also with
robosuite 1.4-style controller configs) is accepted through ``env_meta=``::

    demos = load_demonstrations("square/ph/low_dim_v15.hdf5")
    env = asd_envs.make_env("square", env_meta=demos.env_args)
    env = asd_envs.make_env_from_metadata(demos.env_args)   # any robosuite task, e.g. transport
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from . import compat
from ._render import close_renderer, ensure_offscreen_size, make_renderer

# The one table of robomimic's benchmark tasks: our task name -> robosuite env name, the size of
# the "object" observation, robomimic's rollout horizon. Tasks with an object size are registered
# (envs/tasks.py); the others are known so that their datasets load under a task name.
ROBOMIMIC_TASKS = {
    "lift": ("Lift", 10, 400),
    "can": ("PickPlaceCan", 14, 400),
    "square": ("NutAssemblySquare", 14, 400),
    "transport": ("TwoArmTransport", None, 700),
    "tool_hang": ("ToolHang", None, 700),
}
#: robosuite's cameras in each task's scene (asd_envs.cameras renders them); PickPlaceCan has no sideview
CAMERAS = {
    "lift": ("agentview", "robot0_eye_in_hand", "frontview", "birdview", "sideview", "robot0_robotview"),
    "can": ("agentview", "robot0_eye_in_hand", "frontview", "birdview", "robot0_robotview"),
    "square": ("agentview", "robot0_eye_in_hand", "frontview", "birdview", "sideview", "robot0_robotview"),
}
ENV_NAME_TO_TASK = {env: task for task, (env, _, _) in ROBOMIMIC_TASKS.items()}
HORIZONS = {env: horizon for env, _, horizon in ROBOMIMIC_TASKS.values()}
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
OBS_KEYS = LOW_DIM_KEYS + ("object",)
CONTROL_HZ = 20.0


def default_env_meta(env_name: str) -> dict:
    """robomimic env metadata for a single-Panda OSC_POSE task at 20 Hz (robosuite 1.5 format)."""
    compat.import_robomimic()
    from robosuite.controllers import load_composite_controller_config

    return {
        "env_name": env_name,
        "type": 1,  # robomimic EnvType.ROBOSUITE_TYPE
        "env_kwargs": {
            "robots": ["Panda"],
            "controller_configs": load_composite_controller_config(robot="Panda"),
            "control_freq": int(CONTROL_HZ),
            "reward_shaping": False,
            "has_renderer": False,
            "has_offscreen_renderer": False,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": False,
            "camera_depths": False,
        },
    }


def default_obs_keys(robots: int) -> tuple[str, ...]:
    keys = []
    for r in range(robots):
        keys += [f"robot{r}_eef_pos", f"robot{r}_eef_quat", f"robot{r}_gripper_qpos"]
    return tuple(keys) + ("object",)


class RobomimicEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": int(CONTROL_HZ)}

    def __init__(
        self,
        env_name: str,
        env_meta: dict | None = None,
        obs_keys: Sequence[str] | None = None,
        render_mode: str | None = "rgb_array",
        render_size: tuple[int, int] | int = 256,
        render_camera: str = "agentview",
        terminate_on_success: bool = True,
        quiet: bool = True,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        EnvUtils, _ = compat.import_robomimic()
        meta = copy.deepcopy(env_meta) if env_meta is not None else default_env_meta(env_name)
        if meta.get("env_name") != env_name:
            raise ValueError(
                f"env metadata is for {meta.get('env_name')!r}, but this task is {env_name!r}; "
                "use asd_envs.make_env_from_metadata(env_meta) for other envs"
            )
        meta = compat.upgrade_env_meta(meta)
        kwargs = meta["env_kwargs"]
        robots = kwargs.get("robots", ["Panda"])
        n_robots = 1 if isinstance(robots, str) else len(robots)
        self.obs_keys = tuple(obs_keys) if obs_keys is not None else default_obs_keys(n_robots)
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            compat.ensure_obs_utils(self.obs_keys)
        self.render_mode = render_mode
        if isinstance(render_size, int):
            render_size = (render_size, render_size)
        self.render_size = tuple(int(s) for s in render_size)
        self.render_camera = render_camera
        self.terminate_on_success = bool(terminate_on_success)
        out = io.StringIO()
        with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
            self._env = EnvUtils.create_env_from_metadata(
                env_meta=meta, render=False, render_offscreen=False, use_image_obs=False
            )
        self.rs = self._env.env  # the robosuite env
        self._renderer = None
        self._renderer_model = None
        obs = self._env.get_observation()
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise ValueError(f"observation keys {missing} not provided by {env_name}; available: {sorted(obs)}")
        self.obs_key_dims = tuple(int(np.size(obs[k])) for k in self.obs_keys)
        dim = int(sum(self.obs_key_dims))
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        adim = self._env.action_dimension
        self.action_space = spaces.Box(-1.0, 1.0, shape=(adim,), dtype=np.float32)
        self._last_obs: dict[str, np.ndarray] = obs
        model = self.rs.sim.model._model
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        self.CAMERAS = {name: name for name in names}  # robosuite's cameras, drawn by asd_envs.cameras

    # -- privileged access / dataset hooks ----------------------------------------------------
    @property
    def robomimic_env(self):
        """robomimic's EnvRobosuite."""
        return self._env

    def env_meta(self) -> dict:
        meta = self._env.serialize()
        return meta

    def model_xml(self) -> str:
        return self._env.get_state()["model"]

    def get_state(self) -> np.ndarray:
        return np.array(self.rs.sim.get_state().flatten())

    def get_obs_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._last_obs.items()}

    def mujoco_scene(self):
        """(MjModel, MjData) of the current sim: robosuite replaces both at every hard reset."""
        return self.rs.sim.model._model, self.rs.sim.data._data

    def _flat(self, obs: dict) -> np.ndarray:
        return np.concatenate([np.asarray(obs[k], dtype=np.float64).reshape(-1) for k in self.obs_keys]).astype(
            np.float32
        )

    def _success(self) -> bool:
        return bool(self._env.is_success()["task"])

    # -- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # robosuite samples placements / joint noise from env.rng; the placement samplers
            # hold a reference to that very Generator, so we reseed it in place.
            self.rs.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        if options and options.get("state") is not None:
            st = {"states": np.asarray(options["state"])}
            if options.get("model") is not None:
                st["model"] = options["model"]
            obs = self._env.reset_to(st)
        else:
            obs = self._env.reset()
        self._last_obs = obs
        return self._flat(obs), {"is_success": self._success()}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_space.shape), -1.0, 1.0)
        obs, reward, _, _ = self._env.step(a)
        self._last_obs = obs
        success = self._success()
        terminated = success and self.terminate_on_success
        return self._flat(obs), float(reward), terminated, False, {"is_success": success}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; make_env(..., render_mode='rgb_array')")
            return None
        model = self.rs.sim.model._model
        if self._renderer is None or self._renderer_model is not model:
            self.close()
            h, w = self.render_size
            ensure_offscreen_size(model, h, w)
            self._renderer = make_renderer(model, h, w)
            self._renderer_model = model
        self._renderer.update_scene(self.rs.sim.data._data, camera=self.render_camera)
        return self._renderer.render().copy()

    def close(self):
        close_renderer(self._renderer)
        self._renderer = None
        self._renderer_model = None


def make(spec, **overrides) -> RobomimicEnv:
    """Entry point for the registered robomimic tasks (lift / can / square)."""
    overrides.setdefault("obs_keys", spec.obs_keys)
    return RobomimicEnv(ROBOMIMIC_TASKS[spec.name][0], **overrides)
