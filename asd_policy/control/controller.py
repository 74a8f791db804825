"""RealtimeController: a chunked policy turned into a per-tick ``act(obs) -> action`` that never
waits for inference, on the wall clock or a simulated one. How it schedules, aligns and hands over
chunks is described in :mod:`asd_policy.control.realtime`, which runs it around gymnasium envs."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asd_policy.control.clocks import (
    BatchedSimInference,
    Rate,
    SimBatch,
    SimInference,
    ThreadedInference,
    delay_ticks,
)
from asd_policy.control.episode import RealtimeReport
from asd_policy.control.history import ObsHistory
from asd_policy.control.inference import (
    ChunkInference,
    ChunkPolicy,
    infer_chunk,
    policy_device,
)
from asd_policy.control.latency import LatencyModel
from asd_policy.control.records import MAX_RECORDS, ChunkRecords, check_max_records
from asd_policy.control.transitions import (
    TRANSITIONS,
    PolicyCall,
    action_normalizer,
    check_transition_policy,
    ensemble_action,
    known_actions,
)
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["CLOCKS", "ON_MISS", "RealtimeController"]

CLOCKS = ("wall", "sim")
#: What a tick gets when the current chunk has no action left for it (a deadline miss).
ON_MISS = ("hold", "zero", "extend")


@dataclass
class _Chunk:
    index: int  # its number among the chunks recorded since the reset (ChunkRecords.add_chunk)
    tick: int  # the tick whose observation it was inferred from (its action 0's tick)
    actions: np.ndarray  # the usable actions [n_exec, A]
    span: np.ndarray  # its whole prediction from action 0 on [>= n_exec, A]: what it can contribute to
    # an ensemble, and what on_miss="extend" executes after the usable actions run out


class RealtimeController:
    """Turns a chunked policy into a per-tick ``act(obs) -> action`` that never waits for
    inference (after ``reset``).

    Args:
        policy: any :class:`~asd_policy.control.inference.ChunkPolicy` (e.g. a loaded ``DiffusionPolicy``).
        control_hz: the control rate; used to turn inference latency into ticks of lookahead.
        sampler: the sampler setting passed to ``predict_action`` (None: the policy's default).
        generator: torch generator for the sampler (on the policy's device).
        n_action_steps: actions usable per chunk (default: the policy's).
        lookahead: start the next inference when this many actions (or fewer) are left after the
            current tick. Default: from the latency, ``ceil(latency/period + safety) - 1``.
        safety: fraction of a tick added to the latency estimate (default 0.5).
        on_miss: on a deadline miss, ``"hold"`` (repeat the last action), ``"zero"``, or
            ``"extend"``: execute the chunk's next predicted action beyond ``n_action_steps`` (the
            rest of ``action_pred``; the policy plans them open loop, as the executed ones), holding
            the last only when the prediction runs out too. A chunk is then stale only once all of
            its prediction has elapsed. The miss is still counted (``deadline_misses``), and also
            as ``extended_actions``.
        clock: ``"wall"`` (inference on a thread, the wall clock decides when it arrives) or
            ``"sim"`` (simulated time: see :mod:`asd_policy.control.clocks`; the caller does not sleep).
        latency: the latency model on the simulated clock (a :class:`LatencyModel`, ms, or None:
            the measured latency of each call).
        transition: ``"switch"``, ``"ensemble"`` or ``"inpaint"`` (:mod:`asd_policy.control.transitions`).
        ensemble_decay: ``m`` of the ensemble weights ``exp(-m * i)``, ``i = 0`` the oldest chunk.
        sim_batch: on the simulated clock with a fixed latency model, the
            :class:`~asd_policy.control.clocks.SimBatch` shared by controllers stepped in lockstep
            (:func:`run_realtime_batch`), so their requests are inferred together.
        max_records: how many of the most recent chunks and ticks the controller remembers for
            :meth:`report`, :attr:`chunk_latency_ms` and :attr:`chunk_actions` (default
            :data:`~asd_policy.control.records.MAX_RECORDS`), so a controller running for hours keeps
            flat memory; counts stay exact over the whole run. None keeps everything since the
            reset (what an episode of :func:`run_realtime` keeps). Never changes the actions.
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
        clock: str = "wall",
        latency: LatencyModel | float | None = None,
        transition: str = "switch",
        ensemble_decay: float = 0.01,
        sim_batch: SimBatch | None = None,
        max_records: int | None = MAX_RECORDS,
    ):
        if on_miss not in ON_MISS:
            raise ValueError(f"on_miss must be one of {', '.join(ON_MISS)}, got {on_miss!r}")
        if not control_hz or control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz!r}")
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        if transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")
        check_transition_policy(policy, transition)
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
        self.clock = clock
        self.latency = latency if isinstance(latency, LatencyModel) else LatencyModel(latency)
        if clock == "wall" and self.latency.fixed:
            raise ValueError("a fixed latency model needs clock='sim'; the wall clock measures latency")
        self.transition = transition
        self.ensemble_decay = float(ensemble_decay)
        self._normalize = action_normalizer(policy)
        self.max_records = check_max_records(max_records)
        if sim_batch is not None and clock != "sim":
            raise ValueError("sim_batch needs clock='sim'")
        if sim_batch is not None:
            self._backend = BatchedSimInference(sim_batch, self.period, self.latency, lambda: self.generator)
        elif clock == "sim":
            self._backend = SimInference(self._infer, self.period, self.latency)
        else:
            self._backend = ThreadedInference(self._infer)
        self._history: ObsHistory | None = None
        self._chunks: list[_Chunk] = []  # arrived, oldest first; the last one is current
        self._request_tick = 0
        self._request_prefix: int | None = None
        self._last_action: np.ndarray | None = None
        self._clear_records()
        self.report_ = self._new_report()
        self.tick = 0

    def _new_report(self) -> RealtimeReport:
        return RealtimeReport(control_hz=1.0 / self.period, clock=self.clock, transition=self.transition,
                              on_miss=self.on_miss,
                              **self.latency.as_dict())

    def _clear_records(self) -> None:
        """What the controller reports (bounded by max_records) and, apart from it, the little it
        acts on, so that the reporting window can never change an action."""
        self.records = ChunkRecords(self.max_records)
        self._recent_latency: deque[float] = deque(maxlen=8)  # the latency estimate's
        self._past_actions: deque[np.ndarray] = deque(maxlen=self.policy.n_obs_steps - 1)  # inpaint's past
        self._source: int | None = None  # the chunk that supplied the last action

    # -- inference
    def _infer(self, obs_history: np.ndarray, known: np.ndarray | None = None) -> ChunkInference:
        return infer_chunk(PolicyCall(self.policy, known, self.device), obs_history, self.sampler, self.generator,
                           self.device)

    def _record(self, res: ChunkInference) -> None:
        encode_s = None if self.latency.fixed else res.encode_s  # a modelled latency has no measured part
        self.records.add_chunk(res.latency_s, res.sequential_calls, res.nfe, encode_s)
        self._recent_latency.append(res.latency_s)

    def _as_chunk(self, res: ChunkInference, tick: int) -> _Chunk:
        actions = res.actions[0]
        pred = res.action_pred
        start = self.policy.n_obs_steps - 1
        span = pred[0, start:] if pred is not None and pred.shape[1] - start >= actions.shape[0] else actions
        return _Chunk(self.records.chunks - 1, tick, actions[: self.n_exec], span)

    def lookahead(self) -> int:
        """Actions left in the current chunk at which the next inference starts."""
        if self.fixed_lookahead is not None:
            return int(self.fixed_lookahead)
        return max(0, math.ceil(self._latency_estimate() / self.period + self.safety) - 1)

    def _latency_estimate(self) -> float:
        if self.latency.fixed:
            return self.latency.ms / 1e3
        return max(self._recent_latency, default=0.0)

    def expected_delay(self) -> int:
        """Ticks the next chunk is expected to take (exact for a fixed latency model; from the
        largest of the last 8 latencies otherwise). The inpainted prefix is this long, capped at
        ``n_action_steps - 1`` where the request is built."""
        return delay_ticks(self._latency_estimate(), self.period)

    # -- public API
    def reset(self, obs: np.ndarray, first: ChunkInference | None = None) -> None:
        """Start an episode from ``obs``: clears state and infers the first chunk (blocking).
        ``first``: that chunk, when the caller inferred it from ``obs`` (and made the warm-up
        call) with this controller's generator, as :func:`run_realtime_batch` does for all its envs at once."""
        self._backend.drain()
        self._history = ObsHistory.like(self.policy.n_obs_steps, 1, obs)
        self._history.reset(0, obs)
        if self.generator is None:
            self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.report_ = self._new_report()
        self._clear_records()
        if first is None and self.warmup:
            self._infer(self._history.get())  # first call pays one-off costs; not recorded
        res = first if first is not None else self._infer(self._history.get())
        res.latency_s = self.latency.latency_s(res.latency_s)
        self._record(res)
        self._chunks = [self._as_chunk(res, 0)]
        self.report_.chunks = 1
        self._last_action = None
        self.tick = 0

    def _poll(self, k: int) -> None:
        """A chunk that has arrived replaces the current one, aligned to its observation's tick."""
        res = self._backend.poll(k)
        if res is None:
            return
        rep = self.report_
        self._record(res)
        rep.chunks += 1
        offset = k - self._request_tick
        self.records.delay_ticks.append(offset)
        if self._request_prefix is not None:
            self.records.inpaint_prefix.append(self._request_prefix)
        chunk = self._as_chunk(res, self._request_tick)
        usable = self._reach(chunk)
        if offset >= usable:
            rep.stale_chunks += 1
            rep.skipped_actions += usable
            return
        rep.skipped_actions += offset
        self._chunks.append(chunk)
        if self.transition != "ensemble":
            self._chunks = self._chunks[-1:]

    def _reach(self, chunk: _Chunk) -> int:
        """How many of the chunk's actions (from its action 0) can execute: the usable ones, or its
        whole prediction with ``on_miss="extend"`` (``span`` starts with them: :meth:`_as_chunk`)."""
        return len(chunk.span) if self.on_miss == "extend" else len(chunk.actions)

    def _action_at(self, chunk: _Chunk, idx: int) -> np.ndarray:
        return chunk.actions[idx] if idx < len(chunk.actions) else chunk.span[idx]

    def _planned(self, k: int, j: int) -> np.ndarray:
        """The action tick ``k + j`` will get from the current chunk (held after it runs out),
        planned at tick ``k``."""
        cur = self._chunks[-1]
        idx, reach = k + j - cur.tick, self._reach(cur)
        if idx < reach:
            return self._action_at(cur, idx)
        if self.on_miss == "zero":
            return np.zeros_like(cur.actions[0])
        return self._action_at(cur, reach - 1) if k - cur.tick < reach else self._last_action

    def _request(self, k: int) -> None:
        known, self._request_prefix = None, None
        if self.transition == "inpaint":
            cur = self._chunks[-1]
            horizon = max(len(cur.span) + self.policy.n_obs_steps - 1, len(cur.actions))
            # A chunk that is not stale arrives at most n_exec - 1 ticks late, so no more of its
            # positions can elapse in flight; a longer prefix (an overestimated delay) would hold
            # every action it can execute and it could never change what the robot does.
            future = [self._planned(k, j) for j in range(min(self.expected_delay(), self.n_exec - 1))]
            past = list(self._past_actions)
            known, self._request_prefix = known_actions(horizon, cur.actions.shape[-1],
                                                        self.policy.n_obs_steps - 1, future, past)
        self._request_tick = k
        self._backend.submit(k, self._history.get(), known)

    def _select(self, k: int) -> np.ndarray:
        cur = self._chunks[-1]
        idx = k - cur.tick
        if not 0 <= idx < len(cur.actions):
            self.report_.deadline_misses += 1
        if 0 <= idx < self._reach(cur):
            self.report_.extended_actions += int(idx >= len(cur.actions))
            self.records.count_executed(cur.index)
            self._source = cur.index
            if self.transition != "ensemble":
                return self._action_at(cur, idx)
            self._chunks = [c for c in self._chunks if k - c.tick < len(c.span)]
            return ensemble_action([c.span[k - c.tick] for c in self._chunks], self.ensemble_decay)
        self._source = cur.index if self._source is None else self._source  # a held action is its chunk's
        if self.on_miss != "zero" and self._last_action is not None:  # hold, or extend past the prediction
            return self._last_action
        return np.zeros_like(cur.actions[0])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for this tick, given the newest observation. Call once per control period."""
        if self._history is None:
            raise RuntimeError("call reset(obs) before act(obs)")
        k = self.tick
        if k > 0:
            self._history.push(0, obs)
        self._poll(k)
        # Start the next inference early enough to arrive before this chunk runs out.
        remaining = len(self._chunks[-1].actions) - 1 - (k - self._chunks[-1].tick)
        if not self._backend.pending and remaining <= self.lookahead():
            self._request(k)
            self._poll(k)  # on the simulated clock, a chunk with no delay acts on this very tick
        action = self._select(k)
        self._last_action = action
        executed = np.array(action, dtype=np.float32)  # a copy: a view would keep its whole chunk alive
        self.records.add_tick(executed, self._source)
        self._past_actions.append(executed)
        self.tick += 1
        self.report_.ticks = self.tick
        return np.array(action, copy=True)

    @property
    def chunk_latency_ms(self) -> list[float]:
        """Inference latency of the chunks so far (ms; the last ``max_records``), in arrival order
        (the model's latency on the simulated clock with a fixed latency model)."""
        return [x * 1e3 for x in self.records.latency_s]

    @property
    def chunk_encode_ms(self) -> list[float]:
        """Of each chunk's latency, the camera encoder's (ms; same order as :attr:`chunk_latency_ms`);
        empty without cameras or with a fixed latency model."""
        return [x * 1e3 for x in self.records.encode_s]

    @property
    def chunk_actions(self) -> list[int]:
        """Actions executed from each chunk (same order as :attr:`chunk_latency_ms`)."""
        return list(self.records.executed)

    def report(self, rate: Rate | None = None) -> RealtimeReport:
        rep = self.report_
        self.records.fill(rep, self._normalize)
        if rate is not None:
            rep.achieved_hz = rate.achieved_hz
            rep.idle_s = rate.idle_s
            rep.wall_s = rate.elapsed_s
            rep.idle_fraction = rate.idle_s / rate.elapsed_s if rate.elapsed_s > 0 else None
            rep.overruns = rate.overruns
        elif self.clock == "sim":
            rep.wall_s = rep.ticks * self.period  # simulated time
        return rep

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "RealtimeController":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
