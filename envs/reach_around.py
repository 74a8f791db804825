"""``reach_around``: the project's own multimodal MuJoCo task (MJCF in assets/reach_around.xml).

A planar disc (a stand-in for an end effector, radius 3 cm) starts at the bottom of a 1 m x 1 m
arena and must reach a goal at the top. A 30 cm wide wall sits between them, so the disc has to
pass it on the **left or on the right**: two equally good ways to succeed. The start, obstacle
and goal positions are randomised by a few centimetres per episode; the layout stays nearly
mirror-symmetric, so neither side is preferred. A policy that averages the two modes drives into
the wall and fails; ``info["passed_side"]`` (-1 left, +1 right, 0 not yet) shows mode collapse.

Observation (float32, 12 dims, in this order): ``agent_pos`` (2), ``agent_vel`` (2),
``goal_pos`` (2), ``obstacle_pos`` (2), ``goal_rel`` = goal - agent (2),
``obstacle_rel`` = obstacle - agent (2).
Action (2 dims, [-1, 1]): commanded planar velocity, scaled by ``max_speed`` (0.2 m/s).
Control at 10 Hz (20 physics steps of 5 ms). Success: disc centre within 3 cm of the goal;
the episode terminates on success (``terminate_on_success=False`` keeps it running).
Reward: 1.0 on steps where the task is solved, else 0.0 (sparse, like robomimic).
"""
from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from ._render import close_renderer, make_renderer

ASSET = os.path.join(os.path.dirname(__file__), "assets", "reach_around.xml")

OBS_KEYS = ("agent_pos", "agent_vel", "goal_pos", "obstacle_pos", "goal_rel", "obstacle_rel")
OBS_KEY_DIMS = (2, 2, 2, 2, 2, 2)
CONTROL_HZ = 10.0
MAX_EPISODE_STEPS = 100

# geometry (must match the MJCF)
AGENT_RADIUS = 0.03
OBSTACLE_HALF = (0.15, 0.05)
SUCCESS_RADIUS = 0.03


class ReachAroundEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": int(CONTROL_HZ)}
    #: cameras for image observations (asd_envs.cameras): the MJCF's overhead camera sees the whole arena
    CAMERAS = {"top": "top"}

    def __init__(
        self,
        render_mode: str | None = "rgb_array",
        render_size: tuple[int, int] | int = 240,
        max_speed: float = 0.2,
        terminate_on_success: bool = True,
        start_range: tuple[float, float, float, float] = (-0.08, 0.08, -0.40, -0.32),
        obstacle_range: tuple[float, float, float, float] = (-0.04, 0.04, -0.03, 0.03),
        goal_range: tuple[float, float, float, float] = (-0.08, 0.08, 0.26, 0.34),
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if isinstance(render_size, int):
            render_size = (render_size, render_size)
        self.render_size = tuple(int(s) for s in render_size)
        self.max_speed = float(max_speed)
        self.terminate_on_success = bool(terminate_on_success)
        self.start_range = tuple(start_range)
        self.obstacle_range = tuple(obstacle_range)
        self.goal_range = tuple(goal_range)

        self.model = mujoco.MjModel.from_xml_path(ASSET)
        self.data = mujoco.MjData(self.model)
        self.frame_skip = int(round(1.0 / (CONTROL_HZ * self.model.opt.timestep)))
        self._obstacle_body = self.model.body("obstacle").id
        self._goal_body = self.model.body("goal").id
        self._renderer = None

        dim = int(sum(OBS_KEY_DIMS))
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._passed_side = 0

    # -- privileged state ---------------------------------------------------------------------
    @property
    def agent_pos(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    @property
    def goal_pos(self) -> np.ndarray:
        return self.model.body_pos[self._goal_body, :2].copy()

    @property
    def obstacle_pos(self) -> np.ndarray:
        return self.model.body_pos[self._obstacle_body, :2].copy()

    def mujoco_scene(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        return self.model, self.data

    def get_state(self) -> np.ndarray:
        """Flat simulator state: [time, qpos(2), qvel(2), goal(2), obstacle(2)] (float64)."""
        return np.concatenate(
            [[self.data.time], self.data.qpos, self.data.qvel, self.goal_pos, self.obstacle_pos]
        )

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (9,):
            raise ValueError(f"reach_around state must have shape (9,), got {state.shape}")
        self.data.time = state[0]
        self.data.qpos[:] = state[1:3]
        self.data.qvel[:] = state[3:5]
        self.model.body_pos[self._goal_body, :2] = state[5:7]
        self.model.body_pos[self._obstacle_body, :2] = state[7:9]
        self.data.ctrl[:] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self._passed_side = 0

    def get_obs_dict(self) -> dict[str, np.ndarray]:
        pos, goal, obst = self.agent_pos, self.goal_pos, self.obstacle_pos
        return {
            "agent_pos": pos,
            "agent_vel": self.data.qvel[:2].copy(),
            "goal_pos": goal,
            "obstacle_pos": obst,
            "goal_rel": goal - pos,
            "obstacle_rel": obst - pos,
        }

    def _obs(self) -> np.ndarray:
        d = self.get_obs_dict()
        return np.concatenate([d[k] for k in OBS_KEYS]).astype(np.float32)

    def _is_success(self) -> bool:
        return bool(np.linalg.norm(self.goal_pos - self.agent_pos) < SUCCESS_RADIUS)

    def _update_side(self) -> None:
        if self._passed_side:
            return
        pos, obst = self.agent_pos, self.obstacle_pos
        if abs(pos[1] - obst[1]) <= OBSTACLE_HALF[1] + AGENT_RADIUS:
            self._passed_side = 1 if pos[0] > obst[0] else -1

    def env_meta(self) -> dict[str, Any]:
        """Env metadata in robomimic's ``env_args`` shape (type 2 = gym-style env)."""
        return {
            "env_name": "reach_around",
            "type": 2,
            "env_kwargs": {
                "max_speed": self.max_speed,
                "terminate_on_success": self.terminate_on_success,
                "start_range": list(self.start_range),
                "obstacle_range": list(self.obstacle_range),
                "goal_range": list(self.goal_range),
            },
            "asd_task": "reach_around",
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {"is_success": success, "passed_side": self._passed_side}

    # -- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        if options and options.get("state") is not None:
            self.set_state(options["state"])
        else:
            u = lambda r: np.array(  # noqa: E731
                [self.np_random.uniform(r[0], r[1]), self.np_random.uniform(r[2], r[3])]
            )
            start, obst, goal = u(self.start_range), u(self.obstacle_range), u(self.goal_range)
            self.set_state(np.concatenate([[0.0], start, [0.0, 0.0], goal, obst]))
        return self._obs(), self._info(self._is_success())

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.data.ctrl[:] = a * self.max_speed
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        self._update_side()
        success = self._is_success()
        terminated = success and self.terminate_on_success
        return self._obs(), float(success), terminated, False, self._info(success)

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; make_env(..., render_mode='rgb_array')")
            return None
        if self._renderer is None:
            h, w = self.render_size
            self._renderer = make_renderer(self.model, h, w)
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render().copy()

    def close(self):
        close_renderer(self._renderer)
        self._renderer = None


def make(spec, **overrides) -> ReachAroundEnv:
    return ReachAroundEnv(**overrides)


class ReachAroundExpert:
    """Waypoint expert: picks the left or right side with probability 1/2, a random clearance
    (4-10 cm), random waypoint heights and a random cruise speed (60-100% of max), then follows
    the waypoints with a proportional velocity controller plus a little action noise."""

    def __init__(self, env: gym.Env, rng: np.random.Generator):
        self.env = env
        self.rng = rng
        self.reset()

    @property
    def _sim(self) -> ReachAroundEnv:
        return self.env.unwrapped

    def reset(self, rng: np.random.Generator | None = None) -> None:
        """Start a new episode (call after env.reset); ``rng`` replaces the expert's generator."""
        if rng is not None:
            self.rng = rng
        self.side = int(self.rng.choice([-1, 1]))
        self.clearance = float(self.rng.uniform(0.04, 0.10))
        self.dy = self.rng.uniform(0.0, 0.06, size=2)
        self.speed = float(self.rng.uniform(0.6, 1.0))
        self.noise = 0.03
        self.waypoints = None
        self.index = 0

    def _plan(self) -> None:
        sim = self._sim
        (ox, oy), goal = sim.obstacle_pos, sim.goal_pos
        hw, hh = OBSTACLE_HALF
        x = ox + self.side * (hw + AGENT_RADIUS + self.clearance)
        self.waypoints = [
            np.array([x, oy - hh - AGENT_RADIUS - self.dy[0]]),
            np.array([x, oy + hh + AGENT_RADIUS + self.dy[1]]),
            goal,
        ]
        self.index = 0

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        sim = self._sim
        if self.waypoints is None:
            self._plan()
        pos = sim.agent_pos
        while self.index < len(self.waypoints) - 1 and np.linalg.norm(
            self.waypoints[self.index] - pos
        ) < 0.03:
            self.index += 1
        err = self.waypoints[self.index] - pos
        v = 4.0 * err  # m/s, proportional
        vmax = self.speed * sim.max_speed
        n = np.linalg.norm(v)
        if n > vmax:
            v *= vmax / n
        a = v / sim.max_speed + self.rng.normal(0.0, self.noise, size=2)
        return np.clip(a, -1.0, 1.0).astype(np.float32)
