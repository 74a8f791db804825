"""``fetch_push`` / ``fetch_pick_place``: gymnasium-robotics FetchPush-v4 / FetchPickAndPlace-v4
(MuJoCo bindings, gymnasium >= 1.0) with the goal-conditioned dict observation flattened.

Observation (float32, 31 dims, in this order): ``observation`` (25: gripper position, object
position, object relative to gripper, finger positions, object rotation, object linear and
angular velocity, gripper linear velocity, finger velocity), ``achieved_goal`` (3, the object
position), ``desired_goal`` (3). Action (4, [-1, 1]): gripper displacement (x 5 cm per step) and
finger command (+1 opens, -1 closes). 25 Hz, 50 steps (the standard time limit). Success: object
within 5 cm of the goal; the episode terminates on success (``terminate_on_success=False`` keeps
the standard fixed-length episodes).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

OBS_KEYS = ("observation", "achieved_goal", "desired_goal")
OBS_KEY_DIMS = (25, 3, 3)
GYM_IDS = {"fetch_push": "FetchPush-v4", "fetch_pick_place": "FetchPickAndPlace-v4"}
CONTROL_HZ = 25.0
CAMERAS = {
    "front": {"lookat": (1.3, 0.75, 0.42), "distance": 1.0, "azimuth": 180.0, "elevation": -50.0},
    "external_camera_0": "external_camera_0",
    "head_camera_rgb": "head_camera_rgb",
    "gripper_camera_rgb": "gripper_camera_rgb",
}
MAX_EPISODE_STEPS = 50


def _import():
    try:
        import gymnasium_robotics
    except ImportError as e:
        raise ImportError(
            "the fetch tasks need gymnasium-robotics: pip install -e \".[fetch]\" -c constraints/cpu.txt"
        ) from e
    gym.register_envs(gymnasium_robotics)


class FetchEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": int(CONTROL_HZ)}
    #: cameras for image observations (asd_envs.cameras): the scene's own, plus a fixed free camera
    CAMERAS = CAMERAS

    def __init__(self, gym_id: str, render_mode: str | None = "rgb_array",
                 render_size: tuple[int, int] | int = 480, terminate_on_success: bool = True,
                 **kwargs: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        _import()
        if isinstance(render_size, int):
            render_size = (render_size, render_size)
        self.gym_id = gym_id
        self.kwargs = dict(kwargs)
        self.render_mode = render_mode
        self.terminate_on_success = bool(terminate_on_success)
        h, w = render_size
        # the raw env (gym.make's TimeLimit / checkers are replaced by ours)
        self.inner = gym.make(gym_id, render_mode=render_mode, height=h, width=w, **kwargs).unwrapped
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(sum(OBS_KEY_DIMS),), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._last: dict[str, np.ndarray] = {}

    def _flat(self, obs: dict) -> np.ndarray:
        self._last = {k: np.asarray(obs[k], dtype=np.float64).copy() for k in OBS_KEYS}
        return np.concatenate([self._last[k] for k in OBS_KEYS]).astype(np.float32)

    # -- privileged state / dataset hooks --------------------------------------------------------
    def get_obs_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._last.items()}

    def mujoco_scene(self):
        # gymnasium-robotics moves the goal marker (site target0) to the goal only when it renders
        self.inner._render_callback()
        return self.inner.model, self.inner.data

    def get_state(self) -> np.ndarray:
        """[time, qpos, qvel, mocap_pos, mocap_quat, goal] (float64)."""
        d = self.inner.data
        return np.concatenate([[d.time], d.qpos, d.qvel, d.mocap_pos.ravel(), d.mocap_quat.ravel(), self.inner.goal])

    def env_meta(self) -> dict:
        return {"env_name": self.gym_id, "type": 2, "env_kwargs": {"terminate_on_success": self.terminate_on_success,
                                                                  **self.kwargs}}

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.inner.reset(seed=seed, options=options)
        flat = self._flat(obs)
        return flat, {"is_success": bool(self.inner._is_success(obs["achieved_goal"], obs["desired_goal"]))}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        obs, reward, _, _, info = self.inner.step(a)
        success = bool(info.get("is_success", 0.0))
        terminated = success and self.terminate_on_success
        return self._flat(obs), float(reward), terminated, False, {"is_success": success}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; make_env(..., render_mode='rgb_array')")
            return None
        return self.inner.render()

    def close(self):
        self.inner.close()


def make(spec, **overrides) -> FetchEnv:
    return FetchEnv(GYM_IDS[spec.name], **overrides)


class _FetchExpert:
    def __init__(self, env, rng: np.random.Generator):
        self.env = env
        self.rng = rng
        self.reset()

    def reset(self, rng: np.random.Generator | None = None) -> None:
        if rng is not None:
            self.rng = rng
        self.phase = 0
        self.count = 0
        self.gain = float(self.rng.uniform(8.0, 12.0))
        self.vmax = float(self.rng.uniform(0.7, 1.0))
        self.noise = 0.03
        self._init_params()

    def _init_params(self):
        pass

    def _state(self):
        o = self.env.unwrapped.get_obs_dict()
        return o["observation"][0:3], o["observation"][3:6], o["desired_goal"]

    def move(self, target, grip: float, vmax: float | None = None) -> np.ndarray:
        grip_pos = self._state()[0]
        v = self.gain * (np.asarray(target) - grip_pos)
        cap = self.vmax if vmax is None else vmax
        n = np.linalg.norm(v)
        if n > cap:
            v *= cap / n
        a = np.zeros(4)
        a[:3] = v + self.rng.normal(0.0, self.noise, size=3)
        a[3] = grip
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class FetchPushExpert(_FetchExpert):
    """Go behind the block (opposite the goal), lower to block height, push it to the goal."""

    def _init_params(self):
        self.behind = float(self.rng.uniform(0.05, 0.07))
        self.approach_z = float(self.rng.uniform(0.08, 0.12))
        self.lateral = float(self.rng.uniform(-0.005, 0.005))

    def act(self, obs=None) -> np.ndarray:
        grip, obj, goal = self._state()
        d = goal[:2] - obj[:2]
        dist = np.linalg.norm(d)
        u = d / max(dist, 1e-6)
        perp = np.array([-u[1], u[0]])
        behind = obj[:2] - self.behind * u + self.lateral * perp
        if self.phase == 0:  # above the point behind the block (rise first: never sweep through it)
            tgt = np.array([*behind, obj[2] + self.approach_z])
            if grip[2] < obj[2] + self.approach_z - 0.03 and np.linalg.norm(grip[:2] - behind) > 0.03:
                tgt = np.array([*grip[:2], obj[2] + self.approach_z])
            if np.linalg.norm(grip[:2] - behind) < 0.015:
                self.phase = 1
            return self.move(tgt, -1.0)
        if self.phase == 1:  # lower next to it
            tgt = np.array([*behind, obj[2]])
            if abs(grip[2] - obj[2]) < 0.01:
                self.phase = 2
            return self.move(tgt, -1.0)
        # push: aim the gripper through the block towards the goal, staying on the push line
        err_line = np.dot(grip[:2] - obj[:2], perp)
        if np.dot(obj[:2] - grip[:2], u) < 0.0 or abs(err_line) > 0.03:
            self.phase = 0  # lost the block: go around again
        tgt_xy = obj[:2] + min(dist, 0.05) * u - 0.02 * u - err_line * perp
        tgt = np.array([*tgt_xy, obj[2]])
        return self.move(tgt, -1.0, vmax=0.5 * self.vmax + 0.2)


class FetchPickPlaceExpert(_FetchExpert):
    """Open above the block, descend, close, carry the block to the (possibly aerial) goal."""

    def _init_params(self):
        self.above = float(self.rng.uniform(0.04, 0.08))
        self.close_steps = int(self.rng.integers(3, 6))

    def act(self, obs=None) -> np.ndarray:
        grip, obj, goal = self._state()
        if self.phase == 0:
            tgt = obj + [0, 0, self.above]
            if np.linalg.norm(grip[:2] - obj[:2]) < 0.01:
                self.phase = 1
            return self.move(tgt, 1.0)
        if self.phase == 1:
            tgt = obj.copy()
            if np.linalg.norm(grip - obj) < 0.01:
                self.phase, self.count = 2, 0
            return self.move(tgt, 1.0)
        if self.phase == 2:
            self.count += 1
            if self.count >= self.close_steps:
                self.phase = 3
            return self.move(obj, -1.0)
        if np.linalg.norm(grip - obj) > 0.04:  # dropped it
            self.phase = 0
        return self.move(goal, -1.0)
