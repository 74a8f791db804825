"""What a run reports: :class:`EpisodeResult` (one episode, synchronous or real-time), the
:class:`RealtimeReport` of a real-time run, and :func:`latency_summary`. Plain data, importing
nothing of the package, so the rollout loop and the real-time controller both build on it without
importing each other."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["EpisodeResult", "RealtimeReport", "latency_summary"]


@dataclass
class RealtimeReport:
    """What a real-time run cost and how well it kept its schedule."""

    control_hz: float
    ticks: int = 0  # actions issued (act() calls)
    deadline_misses: int = 0  # ticks with no action left in the current chunk (last action held)
    skipped_actions: int = 0  # chunk actions that elapsed during inference (dropped on alignment)
    stale_chunks: int = 0  # chunks that arrived after all their actions had elapsed
    extended_actions: int = 0  # deadline misses served from the chunk's prediction (on_miss="extend")
    chunks: int = 0  # chunks that arrived during the run (the blocking first one included)
    achieved_hz: float | None = None  # ticks / wall time (needs a Rate; None on the simulated clock)
    idle_s: float | None = None  # time the loop slept waiting for its next tick
    idle_fraction: float | None = None
    overruns: int | None = None  # ticks whose work ran past their slot
    wall_s: float | None = None  # the run's time: wall clock, or simulated (ticks * period)
    chunk_latency_ms: dict = field(default_factory=dict)  # mean/p50/p95/p99 of inference
    sequential_calls_mean: float | None = None
    nfe_mean: float | None = None
    clock: str = "wall"  # wall | sim
    transition: str = "switch"  # switch | ensemble | inpaint
    on_miss: str = "hold"  # hold | zero | extend
    latency_source: str = "measured"  # measured | latency_ms | latency_profile:<path>
    latency_model_ms: float | None = None  # the fixed latency (None: measured)
    delay_ticks: list = field(default_factory=list)  # request -> arrival, each chunk after the first
    inpaint_prefix: list = field(default_factory=list)  # known future actions passed, each inpainted chunk
    boundary_jumps: list = field(default_factory=list)  # ||a_t - a_{t-1}|| (normalised) at chunk switches
    within_chunk_jumps: list = field(default_factory=list)  # the same inside chunks
    load_avg_start: float | None = None  # os.getloadavg()[0] (measured latency only)
    load_avg_end: float | None = None
    # the per-chunk statistics and lists above cover the last max_records chunks (ticks, for the
    # jumps) of a long run; None: all of them since the reset (every episode of run_realtime)
    max_records: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpisodeResult:
    """Outcome and cost of one episode, synchronous (:func:`rollout_episodes`) or real-time
    (:func:`asd_policy.control.realtime.run_realtime`, which also fills ``report``)."""

    seed: int
    success: bool = False  # info["is_success"] was true at some step
    steps: int = 0
    episode_return: float = 0.0
    chunk_latency_ms: list[float] = field(default_factory=list)
    chunk_encode_ms: list[float] = field(default_factory=list)  # of each chunk's latency, the image encoder's (cameras)
    chunk_actions: list[int] = field(default_factory=list)  # actions executed from each chunk
    sequential_calls: list[float] = field(default_factory=list)
    nfe: list[float] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0
    frames: list[np.ndarray] | None = None
    final_info: dict[str, Any] = field(default_factory=dict)  # scalar entries of the last info
    report: "RealtimeReport | None" = None  # deadline misses, skipped actions, rate: real-time episodes

    def action_latency_ms(self) -> list[float]:
        """Inference time per executed action: each chunk's latency spread over the actions
        executed from it (one value per executed action)."""
        out: list[float] = []
        for lat, k in zip(self.chunk_latency_ms, self.chunk_actions):
            if k > 0:
                out.extend([lat / k] * k)
        return out


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """mean / p50 / p95 / p99 of a list of latencies (ms); ``None`` values when empty."""
    arr = np.asarray(list(values_ms), dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}
