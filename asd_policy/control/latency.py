"""Latency models of the simulated clock: where a chunk's latency comes from.

The measured latency of each inference call (``latency_ms=None``), a fixed number of ms, or a
``{sampler: ms}`` map, given as ``latency_ms`` or as a JSON file ``latency_profile``; a profile can
be made from an evaluation's results (:func:`profile_from_results`) or a latency benchmark
(:func:`profile_from_bench`), so that a CPU box replays another device's latency.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from asd_policy.core.config import ConfigError
from asd_policy.sampling.presets import SAMPLER_PRESETS, SamplerConfig

__all__ = ["LatencyModel", "LATENCY_STATS", "check_latency_ms", "load_latency_profile", "profile_from_results",
           "profile_from_bench", "latency_for_samplers", "load_avg"]


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
