"""Receding-horizon control loop for chunked (diffusion) policies over gymnasium envs.

The loop keeps the last ``n_obs_steps`` observations per environment (padded with the first
observation after a reset, as diffusion_policy does), asks the policy for an action chunk
(:func:`~asd_policy.control.inference.infer_chunk`, timed), executes ``n_action_steps`` actions of
it, then re-plans. It drives one ``gymnasium.Env``, a list of them (stepped one after another,
sampled as ONE batch; an env that raises only fails its own episode), or a
``gymnasium.vector.VectorEnv`` (batched sampling; an exception fails every episode still running
in the vector env). One runner serves evaluation and training-time rollouts.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import torch

from asd_policy.control.episode import EpisodeResult
from asd_policy.control.history import ObsHistory, observation_of
from asd_policy.control.inference import (
    ChunkInference,
    ChunkPolicy,
    infer_chunk,
    policy_device,
)
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["rollout_episodes", "scalar_info"]


def _error_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _is_success(info: Any, i: int | None = None) -> bool:
    if not info:
        return False
    val = info.get("is_success", info.get("success", False))
    if i is not None:
        mask = info.get("_is_success", info.get("_success"))
        if mask is not None and not bool(np.asarray(mask).reshape(-1)[i]):
            return False
        val = np.asarray(val).reshape(-1)[i] if np.ndim(val) else val
    return bool(np.asarray(val).any())


def rollout_episodes(
    envs: Any,
    policy: ChunkPolicy,
    seeds: Sequence[int],
    sampler: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
    n_action_steps: int | None = None,
    record_frames: bool = False,
    on_chunk: Callable[[ChunkInference], None] | None = None,
) -> list[EpisodeResult]:
    """Run one episode per environment slot (``seeds[i]`` resets slot ``i``), all in lockstep.

    ``envs``: a ``gymnasium.Env``, a list of them, or a ``gymnasium.vector.VectorEnv`` whose
    ``num_envs == len(seeds)``. Each chunk is sampled for the still-running environments only, as
    one batch. Executes ``n_action_steps`` (default: the policy's) actions per chunk, then
    re-plans. An episode ends at termination or truncation (the env's TimeLimit) or after
    ``max_steps``. An env that raises ends its episode as failed, with the error recorded.
    ``record_frames`` keeps frames of the first slot: its first camera's (a camera task: what the
    policy saw), else ``render()``'s (the env must render rgb arrays).
    """
    import gymnasium as gym

    is_vector = isinstance(envs, gym.vector.VectorEnv)
    if not is_vector and isinstance(envs, gym.Env):
        envs = [envs]
    n = envs.num_envs if is_vector else len(envs)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} environments")
    device = policy_device(policy)
    n_exec = int(n_action_steps or policy.n_action_steps)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(int(seeds[0]))
    run = _Lockstep(envs, is_vector, seeds, policy.n_obs_steps, max_steps)
    t_start = time.perf_counter()
    run.reset()
    if record_frames and run.active[0]:
        run.results[0].frames = []
        run.grab_frame()
    while any(run.active):
        idx = [i for i in range(n) if run.active[i]]
        chunk = infer_chunk(policy, run.history.get(idx), sampler, generator, device)
        if on_chunk is not None:
            on_chunk(chunk)
        executed = {i: 0 for i in idx}
        for k in range(min(n_exec, chunk.actions.shape[1])):
            running = [(j, i) for j, i in enumerate(idx) if run.active[i]]
            if not running:
                break
            steps0 = run.results[0].steps
            run.step(chunk.actions[:, k], running, executed)
            if record_frames and run.results[0].frames is not None and run.results[0].steps > steps0:
                run.grab_frame()
        run.record_chunk(chunk, idx, executed)
    wall = time.perf_counter() - t_start
    for r in run.results:
        r.wall_s = wall
    return run.results


class _Lockstep:
    """The state of :func:`rollout_episodes`: one episode per env slot, stepped together."""

    def __init__(self, envs: Any, is_vector: bool, seeds: Sequence[int], n_obs_steps: int,
                 max_steps: int | None):
        self.envs, self.is_vector, self.seeds = envs, is_vector, [int(s) for s in seeds]
        self.n_obs_steps, self.max_steps = n_obs_steps, max_steps
        self.results = [EpisodeResult(seed=s) for s in self.seeds]
        self.active = [True] * len(self.seeds)
        self.history: ObsHistory | None = None

    def fail(self, i: int, exc: BaseException) -> None:
        self.results[i].error = _error_text(exc)
        self.results[i].success = False
        self.active[i] = False

    def _start(self, i: int, obs: Any) -> None:
        if self.history is None:
            self.history = ObsHistory.like(self.n_obs_steps, len(self.seeds), obs)
        self.history.reset(i, obs)

    def reset(self) -> None:
        if self.is_vector:
            try:
                obs, _ = self.envs.reset(seed=self.seeds)
            except Exception as exc:  # noqa: BLE001 - an env failure is an episode failure
                for i in range(len(self.seeds)):
                    self.fail(i, exc)
                return
            for i in range(len(self.seeds)):
                self._start(i, observation_of(obs, i))
            return
        for i, env in enumerate(self.envs):
            try:
                o, _ = env.reset(seed=self.seeds[i])
            except Exception as exc:  # noqa: BLE001
                self.fail(i, exc)
                continue
            self._start(i, o)

    def _after_step(self, i: int, obs: Any, rew: Any, done: bool, success: bool,
                    executed: dict[int, int]) -> None:
        r = self.results[i]
        r.steps += 1
        executed[i] += 1
        r.episode_return += float(rew)
        r.success = r.success or success
        self.history.push(i, obs)
        if done or (self.max_steps and r.steps >= self.max_steps):
            self.active[i] = False

    def step(self, actions: np.ndarray, running: list[tuple[int, int]], executed: dict[int, int]) -> None:
        """One action for each running slot ``i`` (``actions[j]`` for the pair ``(j, i)``)."""
        if not self.is_vector:
            for j, i in running:
                try:
                    o, rew, term, trunc, info = self.envs[i].step(actions[j])
                except Exception as exc:  # noqa: BLE001
                    self.fail(i, exc)
                    continue
                self.results[i].final_info = scalar_info(info)
                self._after_step(i, o, rew, term or trunc, _is_success(info), executed)
            return
        act = np.zeros((len(self.seeds),) + actions.shape[1:], dtype=np.float32)
        for j, i in running:
            act[i] = actions[j]
        try:
            obs, rew, term, trunc, info = self.envs.step(act)
        except Exception as exc:  # noqa: BLE001
            for _, i in running:
                self.fail(i, exc)
            return
        for _, i in running:
            self._after_step(i, observation_of(obs, i), rew[i], term[i] or trunc[i], _is_success(info, i), executed)

    def record_chunk(self, chunk: ChunkInference, idx: list[int], executed: dict[int, int]) -> None:
        for j, i in enumerate(idx):
            r = self.results[i]
            r.chunk_latency_ms.append(chunk.latency_s * 1e3)
            if chunk.encode_s is not None:
                r.chunk_encode_ms.append(chunk.encode_s * 1e3)
            r.chunk_actions.append(executed[i])
            row = chunk.row(j)
            if row.sequential_calls is not None:
                r.sequential_calls.append(float(row.sequential_calls))
            if row.nfe is not None:
                r.nfe.append(float(row.nfe))

    def grab_frame(self) -> None:
        r = self.results[0]
        cameras = [k for k in (self.history.keys or []) if k.endswith("_image")] if self.history else []
        if cameras:  # a camera task: the GIF is what the policy saw, its first camera's newest frame
            r.frames.append(self.history.buffers[cameras[0]][0, -1].copy())
            return
        try:
            frame = self.envs.render() if self.is_vector else self.envs[0].render()
            if self.is_vector and isinstance(frame, (tuple, list)):
                frame = frame[0]
            if frame is not None:
                r.frames.append(np.asarray(frame))
        except Exception:  # noqa: BLE001 - video is optional; never fail an episode for it
            r.frames = None


def scalar_info(info: Any) -> dict[str, Any]:
    """The plain scalar entries of an env's info dict (e.g. which mode an episode took)."""
    out: dict[str, Any] = {}
    for k, v in (info or {}).items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, int, float, str)) and not str(k).startswith("_"):
            out[str(k)] = v
    return out
