"""The clocks of real-time control: the wall clock (:class:`Rate`, :class:`ThreadedInference`) and
the simulated one. The simulated clock runs real-time control on simulated time, in-process and deterministic.

A chunk requested at tick ``k`` (from the observation of tick ``k``) with latency ``L`` arrives
``delay_ticks(L, period) = ceil(L / period)`` ticks later, i.e. it is usable for the action of
tick ``k + delay``. A latency of exactly ``m`` periods arrives in time for tick ``k + m`` (the
idealised loop in which the observation, the start of inference and the tick coincide); a
latency of 0 arrives for tick ``k`` itself. Nothing sleeps: inference runs synchronously when it
is requested and its result is held back until its arrival tick.

``L`` comes from a latency model: the measured latency of that very inference call
(``latency_ms=None``), a fixed number of ms, or a ``{sampler: ms}`` map (``latency_ms`` or a
JSON file given as ``latency_profile``), so a CPU box can replay another device's latency.

With a fixed latency model a request's arrival tick is known when it is made, so several envs
can run in lockstep on one simulated clock and have their requests inferred together
(:class:`SimBatch`, :class:`BatchedSimInference`): a request runs when its chunk is first due,
batched with every request queued by then. Each chain draws from its own generator, so an
episode is the one it would be alone (up to a batched network call's rounding).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from asd_policy.config import ConfigError
from asd_policy.rollout import concat_histories

__all__ = ["Rate", "delay_ticks", "LatencyModel", "SimInference", "SimBatch", "SimRequest", "BatchedSimInference",
           "ThreadedInference", "check_latency_ms", "load_latency_profile", "profile_from_results", "profile_from_bench", "latency_for_samplers",
           "load_avg"]

#: Float slack so that a latency of exactly m periods (e.g. 0.3 s at 10 Hz) counts as m ticks.
_EPS = 1e-9


def delay_ticks(latency_s: float, period_s: float) -> int:
    """Ticks between a chunk's request and the first tick it can act on: ``ceil(latency / period)``
    (exactly ``m`` periods -> ``m``; 0 -> 0, the chunk acts on the tick it was requested at)."""
    return max(0, math.ceil(latency_s / period_s - _EPS))


def load_avg() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


class LatencyModel:
    """Where a chunk's latency comes from: ``ms=None`` the measured latency of each call, else a
    fixed ``ms``. ``source`` names it for the results (``measured``, ``latency_ms``, ``latency_profile:<path>``)."""

    def __init__(self, ms: float | None = None, source: str | None = None):
        self.ms = None if ms is None else _number("latency_ms", ms)
        self.source = source or ("measured" if self.ms is None else "latency_ms")

    @property
    def fixed(self) -> bool:
        return self.ms is not None

    def latency_s(self, measured_s: float) -> float:
        return measured_s if self.ms is None else self.ms / 1e3

    def as_dict(self) -> dict:
        return {"latency_source": self.source, "latency_model_ms": self.ms}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number of milliseconds >= 0, got {value!r}")
    return float(value)


def check_latency_ms(value: Any) -> Any:
    """``latency_ms`` as given (null, a number, or a ``{sampler: ms}`` map), checked."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): _number(f"latency_ms.{k}", v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"latency_ms must be null, a number of ms or a {{sampler: ms}} map, got "
                              f"{value!r}") from None
    return _number("latency_ms", value)


def load_latency_profile(path: str | os.PathLike) -> dict[str, float]:
    """A latency profile: a JSON file holding ``{sampler_name: ms}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"latency_profile={os.fspath(path)!r}: no such file; give a JSON file "
                          "{sampler: ms}, e.g. {\"ddpm\": 167.5, \"asd\": 32.4}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError(f"latency_profile={os.fspath(path)!r} is not readable JSON ({msg}); give a JSON "
                          "file {sampler: ms}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"latency_profile={os.fspath(path)!r} must hold a non-empty JSON object "
                          f"{{sampler: ms}}, got {type(data).__name__}")
    return {str(k): _number(f"latency_profile {os.fspath(path)}: {k}", v) for k, v in data.items()}


LATENCY_STATS = ("mean", "p50", "p95", "p99")


def profile_from_results(results: Mapping[str, Any], stat: str = "mean") -> dict[str, float]:
    """A latency profile ``{sampler: ms}`` from an evaluation's results.json: each sampler's
    ``chunk_latency_ms[stat]`` (a measured run's own latency, e.g. a GPU's, to replay elsewhere)."""
    if stat not in LATENCY_STATS:
        raise ConfigError(f"stat={stat!r} is not one of {', '.join(LATENCY_STATS)}")
    samplers = results.get("samplers") if isinstance(results, Mapping) else None
    if not isinstance(samplers, Mapping) or not samplers:
        raise ConfigError("no samplers in these results; give the results.json of scripts/eval.py")
    out = {}
    for name, row in samplers.items():
        value = (row.get("chunk_latency_ms") or {}).get(stat)
        if value is None:
            raise ConfigError(f"sampler {name!r} has no chunk_latency_ms.{stat} (no chunk was timed); rerun its episodes")
        out[str(name)] = round(_number(f"{name}.chunk_latency_ms.{stat}", value), 1)
    return out


def profile_from_bench(bench: Mapping[str, Any], model: str, variant: str = "graph", batch: int = 1,
                       stored: Mapping[str, Any] | None = None) -> dict[str, float]:
    """A latency profile ``{sampler: ms}`` from scripts/bench_latency.py's JSON: the median chunk
    latency of ``model``'s rows at ``batch`` in ``variant`` (graph: CUDA-graph replay), under each
    row's own label (``asd-L32-reuse``) and under every preset name whose settings (resolved against
    the policy's ``stored`` sampler) it timed, so that ``samplers=[ddpm,asd,ddim]`` find theirs."""
    from asd_policy.sampler_config import SAMPLER_PRESETS, SamplerConfig

    rows = [r for r in bench.get("rows", []) if (r.get("model"), r.get("variant"), r.get("batch")) == (model, variant, batch)]
    if not rows:
        known = sorted({(r.get("model"), r.get("variant"), r.get("batch")) for r in bench.get("rows", [])})
        raise ConfigError(f"no {variant} rows of model {model!r} at batch {batch} in this benchmark; it has {known}")
    timed = {}
    for r in rows:
        timed.setdefault(r["sampler"], r)  # a DDPM captured per step before its whole-chunk graph: the first one
    out = {label: round(_number(f"{label}.median_ms", r["median_ms"]), 1) for label, r in timed.items()}
    for name, preset in SAMPLER_PRESETS.items():
        want = SamplerConfig.from_dict(name, preset).resolved(stored)
        match = next((r for r in timed.values() if r["method"] == want.method and dict(r["kwargs"]) == dict(want.options)), None)
        if match is not None:
            out[name] = round(float(match["median_ms"]), 1)
    return out


def latency_for_samplers(samplers: Sequence[str], latency_ms: Any = None,
                         latency_profile: str | None = None) -> dict[str, LatencyModel]:
    """The latency model of each sampler; a map (or profile) lacking one of them is an error."""
    if latency_ms is not None and latency_profile is not None:
        raise ConfigError("give latency_ms or latency_profile, not both")
    if latency_profile is not None:
        table, source = load_latency_profile(latency_profile), f"latency_profile:{latency_profile}"
    elif isinstance(latency_ms, Mapping):
        table, source = check_latency_ms(latency_ms), "latency_ms"
    else:
        ms = check_latency_ms(latency_ms)
        return {s: LatencyModel(ms) for s in samplers}
    missing = [s for s in samplers if s not in table]
    if missing:
        where = "latency_profile" if latency_profile is not None else "latency_ms"
        raise ConfigError(f"{where} has no latency for sampler(s) {', '.join(missing)}; add "
                          f"{', '.join(f'{s}: <ms>' for s in missing)} (it has {', '.join(sorted(table))})")
    return {s: LatencyModel(table[s], source) for s in samplers}


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
