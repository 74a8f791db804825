"""From episodes to numbers: the per-episode row, the per-sampler summary (Wilson interval,
latency percentiles, outcomes, real-time counts) and the results dict of a run."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from asd_policy.control.episode import EpisodeResult, latency_summary
from asd_policy.core.devices import describe_device
from asd_policy.sampling.presets import SamplerConfig

__all__ = ["wilson_interval", "episode_row", "flat_row", "summarize", "assemble"]

#: Real-time counts copied from an episode's RealtimeReport into its row.
REALTIME_KEYS = ("ticks", "deadline_misses", "skipped_actions", "stale_chunks", "extended_actions", "achieved_hz",
                 "idle_fraction", "overruns", "clock", "transition", "on_miss", "latency_source", "latency_model_ms",
                 "load_avg_start", "load_avg_end")
#: Per-chunk / per-jump lists kept in episodes.jsonl (results.json's rows get their means).
REALTIME_LISTS = ("delay_ticks", "inpaint_prefix", "boundary_jumps", "within_chunk_jumps")
_SUCCESS_KEYS = ("is_success", "success")


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else min(max(0.0, centre - half), p)
    hi = 1.0 if successes == n else max(min(1.0, centre + half), p)
    return [lo, hi]


def episode_row(sampler: str, episode: int, r: EpisodeResult) -> dict:
    """One episode as a row of episodes.jsonl (with the per-chunk lists)."""
    row = {
        "sampler": sampler,
        "episode": int(episode),
        "seed": int(r.seed),
        "success": bool(r.success),
        "steps": int(r.steps),
        "return": float(r.episode_return),
        "chunks": len(r.chunk_latency_ms),
        "chunk_latency_ms": [round(x, 4) for x in r.chunk_latency_ms],
        "chunk_actions": list(r.chunk_actions),
        **({"chunk_encode_ms": [round(x, 4) for x in r.chunk_encode_ms]} if r.chunk_encode_ms else {}),
        "sequential_calls": list(r.sequential_calls),
        "nfe": list(r.nfe),
        "error": r.error,
        "wall_s": round(float(r.wall_s), 4),
        "final_info": dict(r.final_info),
    }
    if r.report is not None:
        row.update({k: getattr(r.report, k) for k in REALTIME_KEYS})
        row.update({k: [round(float(x), 6) for x in getattr(r.report, k)] for k in REALTIME_LISTS})
    return row


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def flat_row(row: Mapping[str, Any]) -> dict:
    """A per-episode row without the per-chunk lists (for results.json, tables, W&B)."""
    out = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
    for k, v in (row.get("final_info") or {}).items():
        if k not in _SUCCESS_KEYS:
            out[f"info.{k}"] = v
    lat = row.get("chunk_latency_ms") or []
    out["chunk_latency_ms_mean"] = _mean(lat)
    out["chunk_latency_ms_p95"] = float(np.percentile(lat, 95)) if lat else None
    if row.get("chunk_encode_ms"):
        out["chunk_encode_ms_mean"] = _mean(row["chunk_encode_ms"])
    out["sequential_calls_mean"] = _mean(row.get("sequential_calls") or [])
    out["nfe_mean"] = _mean(row.get("nfe") or [])
    for k in REALTIME_LISTS:
        if k in row:
            out[f"{k}_mean"] = _mean(row[k])
    return out


def _action_latencies(row: Mapping[str, Any]) -> list[float]:
    out: list[float] = []
    for lat, k in zip(row.get("chunk_latency_ms") or [], row.get("chunk_actions") or []):
        if k:
            out.extend([lat / k] * int(k))
    return out


def _outcomes(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of each categorical (str/int) value of the final info of successful episodes, e.g.
    which side of the obstacle a multimodal task was solved on ({"passed_side": {"-1": 9, "1": 11}})."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if not r.get("success"):
            continue
        for k, v in (r.get("final_info") or {}).items():
            if k in _SUCCESS_KEYS or isinstance(v, (bool, float)):
                continue
            out.setdefault(k, {}).setdefault(str(v), 0)
            out[k][str(v)] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items() if len(v) <= 10}


def _pooled(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    return _mean(x for r in rows for x in r.get(key) or [])


def _realtime(rows: Sequence[Mapping[str, Any]]) -> dict:
    ticks = sum(r.get("ticks", 0) for r in rows)
    misses = sum(r.get("deadline_misses", 0) for r in rows)
    first = rows[0] if rows else {}
    out = {
        "clock": first.get("clock", "wall"),
        "transition": first.get("transition", "switch"),
        "on_miss": first.get("on_miss", "hold"),
        "latency_source": first.get("latency_source", "measured"),
        "latency_model_ms": first.get("latency_model_ms"),
        "delay_ticks_mean": _pooled(rows, "delay_ticks"),
        "deadline_misses": int(misses),
        "deadline_miss_rate": (misses / ticks) if ticks else None,
        "skipped_actions": int(sum(r.get("skipped_actions", 0) for r in rows)),
        "stale_chunks": int(sum(r.get("stale_chunks", 0) for r in rows)),
        "extended_actions": int(sum(r.get("extended_actions", 0) for r in rows)),
        "boundary_jump_mean": _pooled(rows, "boundary_jumps"),
        "within_chunk_jump_mean": _pooled(rows, "within_chunk_jumps"),
        "achieved_hz_mean": _mean(r.get("achieved_hz") for r in rows),
        "idle_fraction_mean": _mean(r.get("idle_fraction") for r in rows),
    }
    if out["transition"] == "inpaint":
        out["inpaint_prefix_mean"] = _pooled(rows, "inpaint_prefix")
    if out["latency_source"] == "measured":  # the load the latency was measured under, and its spread
        lat = [x for r in rows for x in r.get("chunk_latency_ms") or []]
        out["measured_latency_ms"] = {**latency_summary(lat), "min": min(lat, default=None),
                                      "max": max(lat, default=None)}
        out["load_avg_1min"] = {"start": first.get("load_avg_start"),
                                "end": rows[-1].get("load_avg_end") if rows else None}
    return out


def _encoder_split(rs: Sequence[Mapping[str, Any]]) -> dict:
    """A camera policy's chunk latency in two: ``encode_ms`` (the image encoder, once per chunk) and
    ``sampler_ms`` (the rest: the sampler's network calls); empty without cameras."""
    pairs = [(lat, enc) for r in rs for lat, enc in zip(r.get("chunk_latency_ms") or [], r.get("chunk_encode_ms") or [])]
    if not pairs:
        return {}
    return {"encode_ms": latency_summary([enc for _, enc in pairs]),
            "sampler_ms": latency_summary([lat - enc for lat, enc in pairs])}


def _sampler_summary(rs: Sequence[Mapping[str, Any]], spec: SamplerConfig) -> dict:
    n = len(rs)
    k = sum(1 for r in rs if r["success"])
    entry = {
        "episodes": n,
        "success_rate": (k / n) if n else None,
        "success_ci95": wilson_interval(k, n),
        "chunk_latency_ms": latency_summary([x for r in rs for x in r.get("chunk_latency_ms") or []]),
        "sequential_calls_mean": _mean(x for r in rs for x in r.get("sequential_calls") or []),
        "nfe_mean": _mean(x for r in rs for x in r.get("nfe") or []),
        "speedup_vs_ddpm": None,
        "action_latency_ms": latency_summary([x for r in rs for x in _action_latencies(r)]),
        "errors": sum(1 for r in rs if r.get("error")),
        "sampler": spec.as_dict(),
        "outcomes": _outcomes(rs),
        **_encoder_split(rs),
    }
    if any("deadline_misses" in r for r in rs):
        entry["realtime"] = _realtime(rs)
    return entry


def summarize(rows: Sequence[Mapping[str, Any]], specs: Sequence[SamplerConfig]) -> dict[str, dict]:
    """Per-sampler summary in the results.json schema (speedup against the ``ddpm`` sampler)."""
    out = {}
    for spec in specs:
        rs = sorted((r for r in rows if r["sampler"] == spec.name), key=lambda r: r["episode"])
        out[spec.name] = _sampler_summary(rs, spec)
    ref = next((s.name for s in specs if s.name == "ddpm"), None) or next(
        (s.name for s in specs if s.method == "ddpm"), None)
    ref_lat = out[ref]["chunk_latency_ms"]["mean"] if ref else None
    for entry in out.values():
        mean = entry["chunk_latency_ms"]["mean"]
        if ref_lat and mean:
            entry["speedup_vs_ddpm"] = ref_lat / mean
    return out


def assemble(task: str | None, checkpoint: str | None, device: torch.device, specs: Sequence[SamplerConfig],
             rows: Sequence[Mapping[str, Any]], seed: int, episodes: int, complete: bool, wall_s: float) -> dict:
    """The results dict (results.json) of the rows of episodes ``0..episodes-1``."""
    names = [s.name for s in specs]
    keep = sorted((r for r in rows if r["sampler"] in names and r["episode"] < episodes),
                  key=lambda r: (names.index(r["sampler"]), r["episode"]))
    return {
        "task": task,
        "checkpoint": checkpoint,
        "device": str(device),
        "samplers": summarize(keep, specs),
        "episodes": [flat_row(r) for r in keep],
        "device_name": describe_device(device),
        "seed": int(seed),
        "episodes_requested": int(episodes),
        "complete": bool(complete),
        "wall_s": round(wall_s, 3),
        "torch": torch.__version__,
    }
