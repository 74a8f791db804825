"""The clocks of real-time control: the wall clock (:class:`Rate`, :class:`ThreadedInference`) and
the simulated one. The simulated clock runs real-time control on simulated time, in-process and deterministic.

A chunk requested at tick ``k`` (from the observation of tick ``k``) with latency ``L`` arrives
``delay_ticks(L, period) = ceil(L / period)`` ticks later, i.e. it is usable for the action of
tick ``k + delay``. A latency of exactly ``m`` periods arrives in time for tick ``k + m`` (the
idealised loop in which the observation, the start of inference and the tick coincide); a
latency of 0 arrives for tick ``k`` itself. Nothing sleeps: inference runs synchronously when it
is requested and its result is held back until its arrival tick.

``L`` comes from a latency model (:mod:`asd_policy.control.latency`): the measured latency of that
very inference call (``latency_ms=None``), a fixed number of ms, or a ``{sampler: ms}`` map, so a
CPU box can replay another device's latency.

With a fixed latency model a request's arrival tick is known when it is made, so several envs
can run in lockstep on one simulated clock and have their requests inferred together
(:class:`SimBatch`, :class:`BatchedSimInference`): a request runs when its chunk is first due,
batched with every request queued by then. Each chain draws from its own generator, so an
episode is the one it would be alone (up to a batched network call's rounding).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from asd_policy.control.history import concat_histories
from asd_policy.control.latency import LatencyModel

__all__ = ["Rate", "delay_ticks", "SimInference", "SimBatch", "SimRequest", "BatchedSimInference", "ThreadedInference"]

#: Float slack so that a latency of exactly m periods (e.g. 0.3 s at 10 Hz) counts as m ticks.
_EPS = 1e-9


def delay_ticks(latency_s: float, period_s: float) -> int:
    """Ticks between a chunk's request and the first tick it can act on: ``ceil(latency / period)``
    (exactly ``m`` periods -> ``m``; 0 -> 0, the chunk acts on the tick it was requested at)."""
    return max(0, math.ceil(latency_s / period_s - _EPS))


class SimInference:
    """Inference on the simulated clock: runs the call at once, holds its result back until
    ``request tick + delay_ticks(latency)``; the result's ``latency_s`` is the model's latency."""

    def __init__(self, infer: Callable[..., Any], period_s: float, model: LatencyModel):
        self.infer, self.period, self.model = infer, float(period_s), model
        self._result: Any = None
        self._arrival = 0

    @property
    def pending(self) -> bool:
        return self._result is not None

    def submit(self, tick: int, *args: Any) -> None:
        res = self.infer(*args)
        res.latency_s = self.model.latency_s(res.latency_s)
        self._arrival = tick + delay_ticks(res.latency_s, self.period)
        self._result = res

    def poll(self, tick: int) -> Any:
        if self._result is None or tick < self._arrival:
            return None
        res, self._result = self._result, None
        return res

    def drain(self) -> None:
        self._result = None

    def close(self) -> None:
        self.drain()


@dataclass(eq=False)
class SimRequest:
    """One env's chunk request: its observation history ``[1, T, obs_dim]``, known actions
    ``[1, horizon, action_dim]`` or None, and the generator its chain draws from."""

    obs_history: Any
    known: Any
    generator: Any
    result: Any = None  # its ChunkInference, once its batch ran
    error: BaseException | None = None  # what its batch raised, re-raised where its result is due


class SimBatch:
    """The queued requests of several envs' controllers on one simulated clock.

    ``infer(obs_history [B, T, D], known [B, H, A] or None, generators [B]) -> ChunkInference``
    runs one batched call. :meth:`run` infers every queued request: those with known actions and
    those without in separate calls (they draw their chain's noise differently).
    """

    def __init__(self, infer: Callable[[Any, Any, list], Any]):
        self.infer = infer
        self._queue: list[SimRequest] = []

    def put(self, request: SimRequest) -> None:
        self._queue.append(request)

    def cancel(self, request: SimRequest) -> None:
        self._queue = [r for r in self._queue if r is not request]

    def run(self) -> None:
        queue, self._queue = self._queue, []
        groups: dict[bool, list[SimRequest]] = {}
        for r in queue:
            groups.setdefault(r.known is not None, []).append(r)
        for with_known, reqs in groups.items():
            obs = concat_histories([r.obs_history for r in reqs])
            known = np.concatenate([r.known for r in reqs]) if with_known else None
            try:
                res = self.infer(obs, known, [r.generator for r in reqs])
            except Exception as exc:  # noqa: BLE001 - each env's episode fails when its chunk is due
                for r in reqs:
                    r.error = exc
                continue
            for b, r in enumerate(reqs):
                r.result = res.row(b)


class BatchedSimInference:
    """:class:`SimInference` for one env of a lockstep batch: ``submit`` queues the request in the
    shared :class:`SimBatch`; ``poll`` at its arrival tick runs the batch if it has not run yet.
    Needs a fixed latency model (the arrival tick must be known before inference runs, and a
    measured latency would be the batch's, not this chunk's)."""

    def __init__(self, batch: SimBatch, period_s: float, model: LatencyModel, generator: Callable[[], Any]):
        if not model.fixed:
            raise ValueError("batched simulated-clock inference needs a fixed latency model (latency_ms or "
                             "latency_profile): a measured latency would be the batch's; run one env at a time")
        self.batch, self.period, self.model, self.generator = batch, float(period_s), model, generator
        self._request: SimRequest | None = None
        self._arrival = 0

    @property
    def pending(self) -> bool:
        return self._request is not None

    def submit(self, tick: int, obs_history: Any, known: Any = None) -> None:
        self._request = SimRequest(obs_history, known, self.generator())
        self._arrival = tick + delay_ticks(self.model.latency_s(0.0), self.period)
        self.batch.put(self._request)

    def poll(self, tick: int) -> Any:
        req = self._request
        if req is None or tick < self._arrival:
            return None
        if req.result is None and req.error is None:
            self.batch.run()
        self._request = None
        if req.error is not None:
            raise req.error
        req.result.latency_s = self.model.latency_s(0.0)
        return req.result

    def drain(self) -> None:
        if self._request is not None:
            self.batch.cancel(self._request)
            self._request = None

    def close(self) -> None:
        self.drain()


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


class ThreadedInference:
    """Inference on the wall clock: a background thread; a result arrives at the first tick that
    finds it done."""

    def __init__(self, infer: Callable[..., Any]):
        from concurrent.futures import ThreadPoolExecutor

        self.infer = infer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asd-infer")
        self._future: Any = None

    @property
    def pending(self) -> bool:
        return self._future is not None

    def submit(self, tick: int, *args: Any) -> None:
        self._future = self._pool.submit(self.infer, *args)

    def poll(self, tick: int) -> Any:
        if self._future is None or not self._future.done():
            return None
        fut, self._future = self._future, None
        return fut.result()  # re-raises an inference error here

    def drain(self) -> None:
        if self._future is not None:
            try:
                self._future.result()
            except Exception:  # noqa: BLE001 - a stale inference's error does not matter now
                pass
            self._future = None

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)
