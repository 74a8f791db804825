"""``row_budget="auto"``: the rows per round that minimise a chunk's expected latency on this device.

A chunk's latency is its rounds times one round's cost. Both sides are known before sampling:

* rounds: a round started at step t advances ``expected_steps(best_tree(R, t), t)`` steps under the
  one-draft rejection profile, so a chunk takes about sum_t 1 / expected_steps rounds;
* one round's cost: a model call on (chains x R) rows, read off the device's row-cost curve, measured
  once per model, device and sample shape (timing the model on dummy rows) and cached in-process.

The choice only picks a shape before any noise is drawn, so the sampler stays exact whatever it picks.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from asd_policy.draft_tree import best_tree, expected_steps

__all__ = ["CANDIDATES", "choose_budget", "expected_rounds", "row_cost_curve", "per_call_ms"]

CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_CURVES: dict[tuple, list[tuple[int, float]]] = {}


def expected_rounds(row_budget: int, num_steps: int, profile: float | tuple[float, ...]) -> float:
    """About how many rounds a chunk takes: each step costs 1 / (expected steps of a round there)."""
    return sum(1 / expected_steps(best_tree(row_budget, t, profile), t, profile) for t in range(num_steps))


def per_call_ms(curve: Sequence[tuple[float, float]], rows: float) -> float:
    """Linear interpolation of a row-cost curve [(rows, ms per call)], extrapolated past its ends."""
    if len(curve) == 1 or rows <= curve[0][0]:
        return curve[0][1]
    for (r0, m0), (r1, m1) in zip(curve, curve[1:]):
        if rows <= r1:
            return m0 + (m1 - m0) * (rows - r0) / (r1 - r0)
    (r0, m0), (r1, m1) = curve[-2:]
    return m1 + (m1 - m0) * (rows - r1) / (r1 - r0)


def choose_budget(curve: Sequence[tuple[float, float]], chains: int, num_steps: int, profile: float | tuple[float, ...],
                  candidates: Sequence[int] = CANDIDATES) -> int:
    """The candidate budget with the least expected chunk latency for ``chains`` chains per call."""
    cost = {R: expected_rounds(R, num_steps, profile) * per_call_ms(curve, chains * R) for R in candidates}
    return min(cost, key=cost.get)


def row_cost_curve(model: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any, take_rows: Callable[[Any, torch.Tensor], Any],
                   max_rows: int, repeats: int = 3) -> list[tuple[int, float]]:
    """ms per model call at 1, 2, 4, ... up to max_rows rows (median of ``repeats`` after one
    warm-up), cached per model, device and sample shape. x [1, ...], t [1], cond: one chain's rows."""
    key = (id(model), x.device.type, x.device.index, tuple(x.shape[1:]), max_rows)
    if key not in _CURVES:
        points, rows = [], 1
        while True:
            index = torch.zeros(rows, dtype=torch.long, device=x.device)
            args = (x[index], t[index], take_rows(cond, index))
            times = []
            with torch.no_grad():
                for _ in range(repeats + 1):
                    start = time.perf_counter()
                    model(*args)
                    if x.is_cuda:
                        torch.cuda.synchronize(x.device)
                    times.append((time.perf_counter() - start) * 1e3)
            points.append((rows, statistics.median(times[1:])))
            if rows >= max_rows:
                break
            rows = min(2 * rows, max_rows)
        _CURVES[key] = points
    return _CURVES[key]
