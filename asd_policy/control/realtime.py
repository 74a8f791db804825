"""Real-time control: a chunked policy driven at a fixed control rate, on the wall clock or on a
simulated one (``clock="sim"``: :mod:`asd_policy.control.clocks`), with a chunk transition
(``switch`` | ``ensemble`` | ``inpaint``: :mod:`asd_policy.control.transitions`).

The next chunk is inferred while the current one executes (on a thread on the wall clock; at
once, its result held back until its arrival tick, on the simulated clock). A chunk inferred from
the observation of tick ``k`` holds the actions for ticks ``k, k+1, ...``; when it arrives at
tick ``k + d`` its first ``d`` actions have elapsed and are skipped. If the current chunk runs
out before the next arrives, the tick is a *deadline miss* and the last action is held (or zeros,
``on_miss="zero"``; or, with ``on_miss="extend"``, the chunk's own predicted actions beyond
``n_action_steps`` are executed while it has them, then the last one is held). Both clocks share
this controller; only the inference backend differs.

Integration into your own loop (see docs/realtime.md)::

    ctrl = RealtimeController(policy, control_hz=20, sampler=SamplerConfig("asd", "asd"))
    ctrl.reset(obs)                   # blocking first chunk (robot still at rest)
    rate = Rate(20); rate.start()
    while running:
        action = ctrl.act(obs)        # never blocks on inference
        obs = robot.apply(action)     # your I/O
        rate.sleep()                  # waits for the next tick; counts idle time and overruns
    report = ctrl.report(rate)        # misses, skipped actions, achieved rate, latency, jumps
    ctrl.close()

``run_realtime(env, policy, ...)`` does exactly this around a gymnasium env.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from asd_policy.control.clocks import Rate, SimBatch
from asd_policy.control.controller import CLOCKS, ON_MISS, RealtimeController
from asd_policy.control.episode import EpisodeResult, RealtimeReport
from asd_policy.control.history import ObsHistory
from asd_policy.control.inference import (
    ChunkInference,
    ChunkPolicy,
    infer_chunk,
    policy_device,
)
from asd_policy.control.latency import LatencyModel, load_avg
from asd_policy.control.rollout import _error_text, _is_success, scalar_info
from asd_policy.control.transitions import PolicyCall
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["CLOCKS", "ON_MISS", "Rate", "RealtimeController", "RealtimeReport", "run_realtime", "run_realtime_batch"]


def _control_hz(env: Any, control_hz: float | None) -> float:
    hz = control_hz or getattr(env.unwrapped, "control_hz", None) or env.metadata.get("control_hz")
    if not hz:
        raise ValueError("control_hz not given and the env does not declare one")
    return hz


class _Episode:
    """One env's episode under a controller: ``start`` resets both, each ``step`` is one tick; an
    env or inference failure ends the episode as failed, with its error."""

    def __init__(self, env: Any, ctrl: RealtimeController, seed: int, max_steps: int | None):
        self.env, self.ctrl, self.max_steps = env, ctrl, max_steps
        self.ep = EpisodeResult(seed=int(seed))
        self.load0 = None if ctrl.latency.fixed else load_avg()
        self.obs: Any = None

    def reset_env(self) -> bool:
        try:
            self.obs, _ = self.env.reset(seed=self.ep.seed)
            return True
        except Exception as exc:  # noqa: BLE001 - an env failure fails the episode
            return self._fail(exc)

    def start(self, first: ChunkInference | None = None) -> bool:
        """Reset the env (unless :meth:`reset_env` did) and the controller, with ``first`` if given."""
        if self.obs is None and not self.reset_env():
            return False
        try:
            self.ctrl.reset(self.obs, first)
            return True
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc)

    def step(self) -> bool:
        """One tick; False once the episode is over."""
        ep = self.ep
        try:
            action = self.ctrl.act(self.obs)
            self.obs, rew, term, trunc, info = self.env.step(action)
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc)
        ep.steps += 1
        ep.episode_return += float(rew)
        ep.success = ep.success or _is_success(info)
        ep.final_info = scalar_info(info)
        return not (term or trunc or (self.max_steps and ep.steps >= self.max_steps))

    def _fail(self, exc: Exception) -> bool:
        self.ep.error = _error_text(exc)
        self.ep.success = False
        return False

    def result(self, rate: Rate | None = None) -> EpisodeResult:
        ep, ctrl = self.ep, self.ctrl
        ep.report = ctrl.report(rate)
        if not ctrl.latency.fixed:
            ep.report.load_avg_start, ep.report.load_avg_end = self.load0, load_avg()
        ep.wall_s = ep.report.wall_s or 0.0
        ep.chunk_latency_ms = ctrl.chunk_latency_ms
        ep.chunk_actions = ctrl.chunk_actions
        ep.chunk_encode_ms = ctrl.chunk_encode_ms
        ep.sequential_calls = list(ctrl.records.seq)
        ep.nfe = list(ctrl.records.nfe)
        return ep


def run_realtime(
    env: Any,
    policy: ChunkPolicy,
    control_hz: float | None = None,
    sampler: SamplerConfig | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
    max_records: int | None = None,
    **controller_kwargs: Any,
) -> EpisodeResult:
    """One episode of ``env`` at ``control_hz`` (default: the task's rate, from
    ``env.unwrapped.control_hz`` / ``env.metadata["control_hz"]``) on the wall clock, or on the
    simulated clock with ``clock="sim"`` (no sleeping; ``wall_s`` is then simulated time). The
    result's ``report`` says how well the schedule was kept. An episode keeps its full record
    (``max_records=None``): evaluations report every chunk and jump of it."""
    hz = _control_hz(env, control_hz)
    if generator is None:
        generator = torch.Generator(device=policy_device(policy)).manual_seed(int(seed))
    with RealtimeController(policy, hz, sampler=sampler, generator=generator, max_records=max_records,
                            **controller_kwargs) as ctrl:
        rate = Rate(hz) if ctrl.clock == "wall" else None
        episode = _Episode(env, ctrl, seed, max_steps)
        if episode.start():
            if rate is not None:
                rate.start()
            while episode.step():
                if rate is not None:
                    rate.sleep()
        return episode.result(rate)


def run_realtime_batch(
    envs: Sequence[Any],
    policy: ChunkPolicy,
    seeds: Sequence[int],
    generators: Sequence[torch.Generator],
    latency: LatencyModel,
    control_hz: float | None = None,
    sampler: SamplerConfig | None = None,
    max_steps: int | None = None,
    max_records: int | None = None,
    **controller_kwargs: Any,
) -> list[EpisodeResult]:
    """Episodes of several envs on one simulated clock, in lockstep: at each tick every env acts,
    and the chunk requests queued by the time one is due are inferred in one batched call
    (:class:`~asd_policy.control.clocks.SimBatch`). Needs a fixed latency model. Episode ``i`` (env
    ``envs[i]``, ``seeds[i]``, its own ``generators[i]``) is the one :func:`run_realtime` gives with
    the same seed and generator, up to the rounding of a batched network call (and keeps the same
    full record)."""
    if not (len(envs) == len(seeds) == len(generators)):
        raise ValueError(f"one seed and one generator per env: {len(envs)} envs, {len(seeds)} seeds, "
                         f"{len(generators)} generators")
    hz = _control_hz(envs[0], control_hz)
    device = policy_device(policy)

    def infer(obs: np.ndarray, known: np.ndarray | None, gens: list) -> ChunkInference:
        return infer_chunk(PolicyCall(policy, known, device), obs, sampler, gens, device)

    batch = SimBatch(infer)
    episodes = []
    for env, seed, g in zip(envs, seeds, generators):
        ctrl = RealtimeController(policy, hz, sampler=sampler, generator=g, clock="sim", latency=latency,
                                  sim_batch=batch, max_records=max_records, **controller_kwargs)
        episodes.append(_Episode(env, ctrl, seed, max_steps))
    try:
        running = _start_together([e for e in episodes if e.reset_env()], infer)
        while running:
            still = []
            for e in running:
                if e.step():
                    still.append(e)
                else:
                    e.ctrl.close()  # its pending request leaves the queue before the next batch runs
            running = still
    finally:
        for e in episodes:
            e.ctrl.close()
    return [e.result() for e in episodes]


def _start_together(episodes: list[_Episode], infer: Callable[..., ChunkInference]) -> list[_Episode]:
    """Every episode's warm-up call and first chunk, each in one batched call (as each
    controller's ``reset`` would make them one by one, from the same generators), then the resets;
    the episodes that started. A failed call fails every episode of the batch."""
    if not episodes:
        return []
    history = ObsHistory.like(episodes[0].ctrl.policy.n_obs_steps, len(episodes), episodes[0].obs)
    for i, e in enumerate(episodes):
        history.reset(i, e.obs)
    hist = history.get()
    gens = [e.ctrl.generator for e in episodes]
    try:
        if episodes[0].ctrl.warmup:
            infer(hist, None, gens)
        first = infer(hist, None, gens)
    except Exception as exc:  # noqa: BLE001
        for e in episodes:
            e._fail(exc)
        return []
    return [e for b, e in enumerate(episodes) if e.start(first.row(b))]
