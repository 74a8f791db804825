"""Bounded records: what a long-lived object remembers of its past, so that its memory stays flat
however long it runs (a controller driving a robot for a whole shift, a client, a server).

Everything that gains one entry per chunk, tick or batch keeps the last ``max_records`` of them
(a ``deque`` with ``maxlen``); ``max_records=None`` keeps every entry, the full record an
evaluation needs for its per-episode numbers (an episode ends, so its record does too). Counters
(ticks, deadline misses, chunks) are plain integers and stay exact over the whole run.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np

from asd_policy.control.episode import RealtimeReport, latency_summary
from asd_policy.control.transitions import jumps
from asd_policy.core.config import ConfigError

__all__ = ["MAX_RECORDS", "ChunkRecords", "check_max_records", "window"]

#: The default window of every bounded record: a thousand chunks is about 7 minutes of a 20 Hz
#: controller executing 8 actions per chunk, enough for stable p99 latencies, and costs well
#: under a megabyte.
MAX_RECORDS = 1000


def check_max_records(value: Any, name: str = "max_records") -> int | None:
    """``value`` if it is an int >= 1 or None; a :class:`ConfigError` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1 (how many of the most recent entries to keep) or None "
                          f"(keep every entry, as an evaluation does), got {value!r}")
    return value


def window(max_records: int | None) -> deque:
    """An empty record keeping the last ``max_records`` entries (all of them: None)."""
    return deque(maxlen=check_max_records(max_records))


class ChunkRecords:
    """A real-time controller's record since its reset: per chunk (in arrival order, the first one
    included) its latency, sequential calls, NFE and the actions executed from it; per chunk after
    the first its delay and inpainted prefix; per tick the executed action and the chunk it came
    from (for the jumps); a camera policy's chunks also their encoder time, when the latency is
    measured (a fixed latency model has no encoder part to split off). Each keeps the last
    ``max_records`` entries; ``chunks`` counts them all."""

    def __init__(self, max_records: int | None):
        self.max_records = check_max_records(max_records)
        self.latency_s, self.seq, self.nfe, self.executed = (window(max_records) for _ in range(4))
        self.encode_s = window(max_records)
        self.delay_ticks, self.inpaint_prefix = window(max_records), window(max_records)
        self.actions, self.sources = window(max_records), window(max_records)
        self.chunks = 0

    def add_chunk(self, latency_s: float, sequential_calls: Any, nfe: Any, encode_s: float | None = None) -> int:
        """Records a chunk that arrived; its index (its number among the chunks recorded)."""
        self.executed.append(0)
        self.latency_s.append(latency_s)
        if encode_s is not None:
            self.encode_s.append(encode_s)
        if sequential_calls is not None:
            self.seq.append(float(sequential_calls))
        if nfe is not None:
            self.nfe.append(float(nfe))
        self.chunks += 1
        return self.chunks - 1

    def count_executed(self, index: int) -> None:
        """One more action executed from chunk ``index`` (unless its entry has left the window)."""
        back = self.chunks - index  # counted from the newest: deque indexing is cheap near the ends
        if back <= len(self.executed):
            self.executed[-back] += 1

    def add_tick(self, action: np.ndarray, source: int) -> None:
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.sources.append(source)

    def fill(self, rep: RealtimeReport, normalize: Callable[[np.ndarray], np.ndarray]) -> None:
        """The report's per-chunk statistics and lists, over what the record holds."""
        rep.max_records = self.max_records
        rep.chunk_latency_ms = latency_summary([x * 1e3 for x in self.latency_s])
        rep.sequential_calls_mean = float(np.mean(list(self.seq))) if self.seq else None
        rep.nfe_mean = float(np.mean(list(self.nfe))) if self.nfe else None
        rep.delay_ticks, rep.inpaint_prefix = list(self.delay_ticks), list(self.inpaint_prefix)
        rep.boundary_jumps, rep.within_chunk_jumps = jumps(np.asarray(list(self.actions)), list(self.sources),
                                                           normalize)
