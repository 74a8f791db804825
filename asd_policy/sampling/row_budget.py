"""``row_budget="auto"``: the tree of drafts that minimises a chunk's expected latency on this device.

A chunk's latency is its rounds times one round's cost. Both sides are known before sampling:

* rounds: a round started at step t advances ``expected_steps(tree, t)`` steps under the one-draft
  rejection profile, so a chunk takes about sum_t 1 / expected_steps rounds;
* one round's cost: a model call on (chains x rows) rows, read off the device's row-cost curve
  (measured once per model, device and sample shape, timing the model on dummy rows), plus the
  sampler's own work per round (drafting, the tests, the walk), which is not free on a CPU: a
  16-row best tree costs about 4 ms a round more than a 16-row chain there. That part is measured
  once per device, batch shape and candidate by running the sampler with a model that costs nothing.

The candidates are chains (one draft per step, one-draft ASD) and best trees of 1, 2, 4, ... 256
rows; a candidate whose model calls alone already cost more than the best total so far is not
timed. The choice only picks a shape before any noise is drawn, so the sampler stays exact
whatever it picks.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from asd_policy.sampling.draft_tree import DraftTree, best_tree, expected_steps

__all__ = ["CANDIDATES", "KINDS", "choose_shape", "expected_model_ms", "expected_rounds", "row_cost_curve", "per_call_ms",
           "tree_for"]

CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KINDS = ("chain", "best")  # one draft per step (one-draft ASD), or the best tree under the profile


def tree_for(kind: str, row_budget: int, t: int, profile: float | tuple[float, ...]) -> DraftTree:
    """The shape of a round at step t: a chain of ``row_budget`` rows, or the best tree of that many."""
    return DraftTree.chain(row_budget) if kind == "chain" else best_tree(row_budget, t, profile)


def expected_rounds(row_budget: int, num_steps: int, profile: float | tuple[float, ...], kind: str = "best") -> float:
    """About how many rounds a chunk takes: each step costs 1 / (expected steps of a round there)."""
    return sum(1 / expected_steps(tree_for(kind, row_budget, t, profile), t, profile) for t in range(num_steps))


def expected_model_ms(curve: Sequence[tuple[float, float]], chains: int, row_budget: int, num_steps: int,
                      profile: float | tuple[float, ...], kind: str = "best") -> float:
    """A chunk's expected model time: each step costs (a call on the rows its round verifies) /
    (expected steps of that round). A round near the end verifies only the rows above the readout,
    fewer for a chain than its budget (a best tree spends the rest on width), so each round is
    costed at its own row count."""
    total = 0.0
    for t in range(num_steps):
        tree = tree_for(kind, row_budget, t, profile)
        rows = sum(1 for i in range(tree.size) if tree.row[i] and tree.depth[i] <= t)
        total += per_call_ms(curve, chains * rows) / expected_steps(tree, t, profile)
    return total


def per_call_ms(curve: Sequence[tuple[float, float]], rows: float) -> float:
    """Linear interpolation of a row-cost curve [(rows, ms per call)], extrapolated past its ends."""
    if len(curve) == 1 or rows <= curve[0][0]:
        return curve[0][1]
    for (r0, m0), (r1, m1) in zip(curve, curve[1:]):
        if rows <= r1:
            return m0 + (m1 - m0) * (rows - r0) / (r1 - r0)
    (r0, m0), (r1, m1) = curve[-2:]
    return m1 + (m1 - m0) * (rows - r1) / (r1 - r0)


def choose_shape(curve: Sequence[tuple[float, float]], chains: int, num_steps: int, profile: float | tuple[float, ...],
                 overhead_ms: Callable[[str, int], float] | None = None, kinds: Sequence[str] = KINDS,
                 candidates: Sequence[int] = CANDIDATES) -> tuple[str, int]:
    """(kind, row budget) with the least expected chunk latency for ``chains`` chains per call: the
    model's time (:func:`expected_model_ms`) plus rounds x ``overhead_ms(kind, rows)``, the sampler's
    own work per round (None: free). Overheads are asked for only where the model alone leaves a
    chance to win, cheapest model cost first."""
    lower = {(k, R): expected_model_ms(curve, chains, R, num_steps, profile, k) for k in kinds for R in candidates}
    best, best_cost = None, float("inf")
    for key in sorted(lower, key=lower.get):
        if lower[key] >= best_cost:
            break
        extra = overhead_ms(*key) if overhead_ms is not None else 0.0
        cost = lower[key] + expected_rounds(key[1], num_steps, profile, key[0]) * extra
        if cost < best_cost:
            best, best_cost = key, cost
    return best


def row_cost_curve(model: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any, take_rows: Callable[[Any, torch.Tensor], Any],
                   max_rows: int, repeats: int = 5) -> list[tuple[int, float]]:
    """ms per model call at 1, 2, 4, ... up to max_rows rows: the least of ``repeats`` calls after one
    warm-up (other work on the machine only ever adds time, and one noisy point would fix the choice
    for the whole process). x [1, ...], t [1], cond: one chain's rows. The caller caches it."""
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
        points.append((rows, min(times[1:])))
        if rows >= max_rows:
            return points
        rows = min(2 * rows, max_rows)
