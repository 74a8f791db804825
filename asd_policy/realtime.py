"""Real-time control: a chunked policy driven at a fixed control rate on the wall clock.

The next action chunk is inferred on a background thread while the current chunk executes. A
chunk inferred from the observation of tick ``k`` holds the actions for ticks ``k, k+1, ...``;
when it arrives at tick ``k + d`` its first ``d`` actions have already elapsed and are skipped
(the chunk is aligned to the time it arrives). If the current chunk runs out before the next
arrives, the tick is a *deadline miss* and the last action is held (or zeros, ``on_miss="zero"``).

Integration into your own loop (see docs/realtime.md)::

    from asd_policy.realtime import RealtimeController, Rate

    ctrl = RealtimeController(policy, control_hz=20, sampler=SamplerConfig("asd", "asd"))
    ctrl.reset(obs)                   # blocking first chunk (robot still at rest)
    rate = Rate(20)
    while running:
        action = ctrl.act(obs)        # never blocks on inference
        obs = robot.apply(action)     # your I/O
        rate.sleep()                  # waits for the next tick; counts idle time and overruns
    report = ctrl.report(rate)        # misses, skipped actions, achieved rate, latency
    ctrl.close()

``run_realtime(env, policy, ...)`` does exactly this around a gymnasium env.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from asd_policy.rollout import (
    ChunkInference,
    ChunkPolicy,
    EpisodeResult,
    ObsHistory,
    _error_text,
    _is_success,
    infer_chunk,
    latency_summary,
    policy_device,
    scalar_info,
)
from asd_policy.sampler_config import SamplerConfig

__all__ = ["Rate", "RealtimeController", "RealtimeReport", "run_realtime"]


class Rate:
    """Sleep until the next tick of a fixed-rate loop; counts idle time and overruns.

    ``sleep()`` returns at ``t0 + n * period``. A tick whose work ran past its slot is an overrun;
    if the loop fell more than one full period behind, the schedule restarts from now instead of
    running the missed ticks back to back.
    """

    def __init__(self, hz: float, clock: Callable[[], float] = time.perf_counter):
        if not hz or hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {hz!r}")
        self.period = 1.0 / float(hz)
        self.clock = clock
        self.t0: float | None = None
        self.next_t = 0.0
        self.ticks = 0
        self.idle_s = 0.0
        self.overruns = 0
        self.last_t = 0.0

    def start(self) -> None:
        self.t0 = self.clock()
        self.next_t = self.t0 + self.period
        self.last_t = self.t0

    def sleep(self) -> None:
        if self.t0 is None:
            self.start()
        now = self.clock()
        wait = self.next_t - now
        if wait > 0:
            # Coarse sleep, then a short spin for the last ~0.5 ms (OS sleep overshoots).
            if wait > 5e-4:
                time.sleep(wait - 5e-4)
            while self.clock() < self.next_t:
                pass
            self.idle_s += wait
            self.next_t += self.period
        else:
            self.overruns += 1
            self.next_t += self.period
            if now - self.next_t > self.period:
                self.next_t = now + self.period
        self.ticks += 1
        self.last_t = self.clock()

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.t0 is None else self.last_t - self.t0

    @property
    def achieved_hz(self) -> float:
        return self.ticks / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class RealtimeReport:
    """What a real-time run cost and how well it kept its schedule."""

    control_hz: float
    ticks: int = 0  # actions issued (act() calls)
    deadline_misses: int = 0  # ticks with no action left in the current chunk (last action held)
    skipped_actions: int = 0  # chunk actions that elapsed during inference (dropped on alignment)
    stale_chunks: int = 0  # chunks that arrived after all their actions had elapsed
    chunks: int = 0  # chunks that arrived during the run (the blocking first one included)
    achieved_hz: float | None = None  # ticks / wall time (needs a Rate)
    idle_s: float | None = None  # time the loop slept waiting for its next tick
    idle_fraction: float | None = None
    overruns: int | None = None  # ticks whose work ran past their slot
    wall_s: float | None = None
    chunk_latency_ms: dict = field(default_factory=dict)  # mean/p50/p95/p99 of inference
    sequential_calls_mean: float | None = None
    nfe_mean: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class RealtimeController:
    """Turns a chunked policy into a per-tick ``act(obs) -> action`` that never waits for
    inference (after ``reset``).

    Args:
        policy: any :class:`~asd_policy.rollout.ChunkPolicy` (e.g. a loaded ``DiffusionPolicy``).
        control_hz: the control rate; used to turn inference latency into ticks of lookahead.
        sampler: the sampler setting passed to ``predict_action`` (None: the policy's default).
        generator: torch generator for the sampler (on the policy's device).
        n_action_steps: actions usable per chunk (default: the policy's).
        lookahead: start the next inference when this many actions (or fewer) are left after the
            current tick. Default: from the measured latency, ``ceil(latency/period + safety) - 1``.
        safety: fraction of a tick added to the latency estimate (default 0.5).
        on_miss: ``"hold"`` (repeat the last action) or ``"zero"`` on a deadline miss.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        control_hz: float,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        n_action_steps: int | None = None,
        lookahead: int | None = None,
        safety: float = 0.5,
        on_miss: str = "hold",
        warmup: bool = True,
    ):
        if on_miss not in ("hold", "zero"):
            raise ValueError(f"on_miss must be 'hold' or 'zero', got {on_miss!r}")
        if not control_hz or control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz!r}")
        self.policy = policy
        self.period = 1.0 / float(control_hz)
        self.sampler = sampler
        self.device = policy_device(policy)
        self.generator = generator
        self.n_exec = int(n_action_steps or policy.n_action_steps)
        self.fixed_lookahead = lookahead
        self.safety = float(safety)
        self.on_miss = on_miss
        self.warmup = warmup
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asd-infer")
        self._lock = threading.Lock()
        self._history: ObsHistory | None = None
        self._future: Future | None = None
        self._future_tick = 0
        self._chunk: np.ndarray | None = None
        self._chunk_tick = 0
        self._last_action: np.ndarray | None = None
        self._latencies: list[float] = []
        self._seq: list[float] = []
        self._nfe: list[float] = []
        self._executed: list[int] = []  # actions executed from each recorded chunk
        self._chunk_index = 0
        self.report_ = RealtimeReport(control_hz=float(control_hz))
        self.tick = 0

    # -- inference
    def _infer(self, obs_history: np.ndarray) -> ChunkInference:
        return infer_chunk(self.policy, obs_history, self.sampler, self.generator, self.device)

    def _record(self, res: ChunkInference) -> None:
        self._executed.append(0)
        self._latencies.append(res.latency_s)
        if res.sequential_calls is not None:
            self._seq.append(float(res.sequential_calls))
        if res.nfe is not None:
            self._nfe.append(float(res.nfe))

    def lookahead(self) -> int:
        """Actions left in the current chunk at which the next inference starts."""
        if self.fixed_lookahead is not None:
            return int(self.fixed_lookahead)
        recent = self._latencies[-8:] or [0.0]
        return max(0, math.ceil(max(recent) / self.period + self.safety) - 1)

    # -- public API
    def reset(self, obs: np.ndarray) -> None:
        """Start an episode from ``obs``: clears state and infers the first chunk (blocking)."""
        self._drain()
        obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        self._history = ObsHistory(self.policy.n_obs_steps, 1, obs.shape[0])
        self._history.reset(0, obs)
        if self.generator is None:
            self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.report_ = RealtimeReport(control_hz=1.0 / self.period)
        self._latencies, self._seq, self._nfe, self._executed = [], [], [], []
        if self.warmup:
            self._infer(self._history.get())  # first call pays one-off costs; not recorded
        res = self._infer(self._history.get())
        self._record(res)
        self._chunk = res.actions[0]
        self._chunk_tick = 0
        self._chunk_index = 0
        self.report_.chunks = 1
        self._last_action = None
        self.tick = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for this tick, given the newest observation. Call once per control period."""
        if self._history is None:
            raise RuntimeError("call reset(obs) before act(obs)")
        k = self.tick
        if k > 0:
            self._history.push(0, obs)
        rep = self.report_
        # A finished inference replaces the current chunk, aligned to its observation's tick.
        if self._future is not None and self._future.done():
            res = self._future.result()  # re-raises an inference error here
            self._future = None
            self._record(res)
            rep.chunks += 1
            offset = k - self._future_tick
            if offset >= min(self.n_exec, res.actions.shape[1]):
                rep.stale_chunks += 1
                rep.skipped_actions += min(self.n_exec, res.actions.shape[1])
            else:
                rep.skipped_actions += offset
                self._chunk = res.actions[0]
                self._chunk_tick = self._future_tick
                self._chunk_index = len(self._executed) - 1
        idx = k - self._chunk_tick
        usable = min(self.n_exec, self._chunk.shape[0])
        if 0 <= idx < usable:
            action = self._chunk[idx]
            self._executed[self._chunk_index] += 1
        else:
            rep.deadline_misses += 1
            if self.on_miss == "hold" and self._last_action is not None:
                action = self._last_action
            else:
                action = np.zeros_like(self._chunk[0])
        # Start the next inference early enough to arrive before this chunk runs out.
        remaining = usable - 1 - idx
        if self._future is None and remaining <= self.lookahead():
            self._future_tick = k
            self._future = self._pool.submit(self._infer, self._history.get())
        self._last_action = action
        self.tick += 1
        rep.ticks = self.tick
        return np.array(action, copy=True)

    @property
    def chunk_latency_ms(self) -> list[float]:
        """Inference latency of every chunk so far (ms), in arrival order."""
        return [x * 1e3 for x in self._latencies]

    @property
    def chunk_actions(self) -> list[int]:
        """Actions executed from each chunk (same order as :attr:`chunk_latency_ms`)."""
        return list(self._executed)

    def report(self, rate: Rate | None = None) -> RealtimeReport:
        rep = self.report_
        rep.chunk_latency_ms = latency_summary([x * 1e3 for x in self._latencies])
        rep.sequential_calls_mean = float(np.mean(self._seq)) if self._seq else None
        rep.nfe_mean = float(np.mean(self._nfe)) if self._nfe else None
        if rate is not None:
            rep.achieved_hz = rate.achieved_hz
            rep.idle_s = rate.idle_s
            rep.wall_s = rate.elapsed_s
            rep.idle_fraction = rate.idle_s / rate.elapsed_s if rate.elapsed_s > 0 else None
            rep.overruns = rate.overruns
        return rep

    def _drain(self) -> None:
        if self._future is not None:
            try:
                self._future.result()
            except Exception:  # noqa: BLE001 - a stale inference's error does not matter now
                pass
            self._future = None

    def close(self) -> None:
        self._drain()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "RealtimeController":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_realtime(
    env: Any,
    policy: ChunkPolicy,
    control_hz: float | None = None,
    sampler: SamplerConfig | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
    **controller_kwargs: Any,
) -> EpisodeResult:
    """One episode of ``env`` at ``control_hz`` on the wall clock (default: the task's rate,
    from ``env.unwrapped.control_hz`` / ``env.metadata["control_hz"]``); the result's ``report``
    says how well the schedule was kept."""
    hz = control_hz or getattr(env.unwrapped, "control_hz", None) or env.metadata.get("control_hz")
    if not hz:
        raise ValueError("control_hz not given and the env does not declare one")
    if generator is None:
        generator = torch.Generator(device=policy_device(policy)).manual_seed(int(seed))
    ep = EpisodeResult(seed=int(seed))
    with RealtimeController(policy, hz, sampler=sampler, generator=generator,
                            **controller_kwargs) as ctrl:
        rate = Rate(hz)
        try:
            obs, _ = env.reset(seed=int(seed))
            ctrl.reset(obs)
            rate.start()
            while True:
                action = ctrl.act(obs)
                obs, rew, term, trunc, info = env.step(action)
                ep.steps += 1
                ep.episode_return += float(rew)
                ep.success = ep.success or _is_success(info)
                ep.final_info = scalar_info(info)
                if term or trunc or (max_steps and ep.steps >= max_steps):
                    break
                rate.sleep()
        except Exception as exc:  # noqa: BLE001 - an env failure fails the episode
            ep.error = _error_text(exc)
            ep.success = False
        ep.report = ctrl.report(rate)
        ep.wall_s = ep.report.wall_s or 0.0
        ep.chunk_latency_ms = ctrl.chunk_latency_ms
        ep.chunk_actions = ctrl.chunk_actions
        ep.sequential_calls = list(ctrl._seq)
        ep.nfe = list(ctrl._nfe)
    return ep
