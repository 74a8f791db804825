"""Small stand-ins for the eval/rollout/real-time tests: a toy reaching env and fake policies."""
from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch

from asd_policy.policy.diffusion_policy import PolicyOutput
from asd_policy.sampling.base import SamplerStats


class ToyReach(gym.Env):
    """A point moves toward a goal in 2-D; success within 0.1. obs = [pos, goal].

    ``info["goal_side"]`` (-1 or 1: the sign of the goal's x) is a categorical outcome, like
    reach_around's ``passed_side``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50, "control_hz": 50}

    def __init__(self, render_mode=None, fail_seeds=(), fail_at=3, max_episode_steps=30):
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.render_mode = render_mode
        self.fail_seeds = set(fail_seeds)
        self.fail_at = fail_at
        self.control_hz = 50.0
        self._seed = None
        self._t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._seed = seed
        self._t = 0
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.goal = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), self._info(False)

    def _info(self, success):
        return {"is_success": success, "goal_side": 1 if self.goal[0] >= 0 else -1}

    def _obs(self):
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def step(self, action):
        self._t += 1
        if self._seed in self.fail_seeds and self._t >= self.fail_at:
            raise RuntimeError(f"simulated physics blow-up (seed {self._seed})")
        self.pos = np.clip(self.pos + 0.25 * np.asarray(action, np.float32), -2, 2).astype(np.float32)
        success = bool(np.linalg.norm(self.pos - self.goal) < 0.1)
        return self._obs(), float(success), success, False, self._info(success)

    def render(self):
        img = np.zeros((16, 16, 3), np.uint8)
        x, y = ((self.pos + 2) / 4 * 15).astype(int)
        img[y, x] = 255
        return img


def make_toy(render_mode=None, **kw):
    return gym.wrappers.TimeLimit(ToyReach(render_mode=render_mode, **kw), max_episode_steps=30)


def fake_stats(method: str, batch: int, sequential_calls: int) -> SamplerStats:
    """What asd_policy.sampling reports for ``batch`` chains of ``sequential_calls`` rounds each."""
    return SamplerStats(method=method, batch_size=batch, sequential_calls=sequential_calls,
                        nfe=sequential_calls * batch, rounds=torch.full((batch,), sequential_calls))


class FakePolicy:
    """Proportional controller with sampler-dependent 'cost' (sleep per sequential call); returns a
    PolicyOutput as DiffusionPolicy.predict_action does."""

    task_name = "toy"

    def __init__(self, delay_per_call=0.0, n_obs_steps=2, n_action_steps=4, noise=0.3, fixed_latency=0.0):
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.horizon = max(8, n_action_steps + n_obs_steps - 1)
        self.obs_dim = 4
        self.action_dim = 2
        self.device = torch.device("cpu")
        self.delay_per_call = delay_per_call
        self.fixed_latency = fixed_latency
        self.noise = noise
        self.calls = 0

    def predict_action(self, obs_history, method="ddpm", generator=None, known_actions=None, **kw):
        """As DiffusionPolicy: ``known_actions`` [B, horizon, action_dim] (NaN = free) are held
        fixed in ``action_pred``; ``actions = action_pred[:, n_obs_steps-1 : ... + n_action_steps]``."""
        self.calls += 1
        seq = {"ddpm": 100, "ddim": int(kw.get("num_inference_steps", 10))}.get(
            method, 100 // int(kw.get("speculation_length", 16)) + 4)
        b = obs_history.shape[0]
        if self.delay_per_call or self.fixed_latency:
            time.sleep(self.fixed_latency + seq * self.delay_per_call)
        obs = obs_history[:, -1].float()
        remaining = obs[:, 2:] - obs[:, :2]  # plan a straight line to the goal (env moves 0.25 * a)
        noise = randn_rows((b, self.n_action_steps, 2), generator) * self.noise
        acts = []
        for k in range(self.n_action_steps):
            a = (remaining / 0.25 + noise[:, k]).clamp(-1, 1)
            remaining = remaining - 0.25 * a
            acts.append(a)
        actions = torch.stack(acts, 1)
        start = self.n_obs_steps - 1
        action_pred = torch.cat([actions[:, :1].expand(b, start, 2), actions,
                                 actions[:, -1:].expand(b, self.horizon - self.n_action_steps - start, 2)], 1)
        action_pred = apply_known(action_pred, known_actions)
        return PolicyOutput(action_pred[:, start:start + self.n_action_steps], action_pred,
                            fake_stats(method, b, seq))


def randn_rows(shape, generator):
    """``torch.randn(shape)``; with a list of generators (one per row, as DiffusionPolicy takes them)
    row b is drawn from generator b alone, as it would be in a batch of one."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
    return torch.randn(shape, generator=generator)


def apply_known(action_pred, known_actions):
    """``action_pred`` with the finite entries of ``known_actions`` (the inpainting contract)."""
    if known_actions is None:
        return action_pred
    known = torch.as_tensor(known_actions, dtype=action_pred.dtype)
    if known.shape != action_pred.shape:
        raise ValueError(f"known_actions must be {list(action_pred.shape)}, got {list(known.shape)}")
    return torch.where(torch.isnan(known), action_pred, known)


class JumpyPolicy:
    """Chunks that jump: chunk ``c`` is ``offset_c + 0.05 * position`` (every dim) with a random
    offset per chunk; given ``known_actions`` the offset continues the last known action, as an
    inpainting sampler would. Records every ``known_actions`` it gets."""

    def __init__(self, n_obs_steps=2, n_action_steps=8, horizon=16, action_dim=2):
        self.n_obs_steps, self.n_action_steps, self.horizon = n_obs_steps, n_action_steps, horizon
        self.action_dim = action_dim
        self.device = torch.device("cpu")
        self.known: list = []

    def predict_action(self, obs_history, method="ddpm", generator=None, known_actions=None, **kw):
        b = obs_history.shape[0]
        pos = torch.arange(self.horizon, dtype=torch.float32)[None, :, None]
        offset = torch.rand((b, 1, 1), generator=generator) * 2 - 1
        if known_actions is not None:
            known = torch.as_tensor(known_actions, dtype=torch.float32)
            self.known.append(known.clone())
            rows = (~torch.isnan(known[0, :, 0])).nonzero().reshape(-1)
            if rows.numel():
                last = int(rows.max())
                offset = known[:, last:last + 1, :1] - 0.05 * last
        pred = apply_known((offset + 0.05 * pos).expand(b, self.horizon, self.action_dim).clone(), known_actions)
        start = self.n_obs_steps - 1
        return PolicyOutput(pred[:, start:start + self.n_action_steps], pred, fake_stats(method, b, 10))
