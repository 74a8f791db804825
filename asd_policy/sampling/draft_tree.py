"""Draft trees for ASD: the shapes of a round's drafts (design note section 8), free of model calls.

A :class:`DraftTree` is the chain of L steps (one-draft ASD) or ``best_tree``, the tree of
``row_budget`` verified rows that maximises the expected steps per round under a per-step profile
of one-draft rejection rates. A shape depends only on (budget, step, profile), so it is fixed
before the round's noise, which is all exactness needs. The rule applied at each node is in
:mod:`asd_policy.sampling.acceptance`; the sampler that walks these trees is
:mod:`asd_policy.sampling.tree`.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from asd_policy.sampling.acceptance import residual_constants

__all__ = ["DraftTree", "best_tree", "expected_steps", "check_tree_options", "DEFAULT_PROFILE", "SHAPES"]

#: The one-draft rejection rate per step (index t; the last value holds for every later step) that
#: trees are shaped for unless told otherwise: the shipped policies' mean over five tasks, one-draft
#: ASD L = 32 along episodes (docs/bench/tree-cpu.json, "Draft trees" in docs/benchmarks.md): most
#: drafts fail in the last steps, few (0.055-0.096) elsewhere. Step 0 is the readout, never drafted.
DEFAULT_PROFILE = (0.0, 0.9, 0.6, 0.55, 0.35, 0.35, 0.25, 0.25, 0.2, 0.15, 0.065)
SHAPES = ("best", "chain")



@dataclass(frozen=True)
class DraftTree:
    """A shape: ``parent[i]`` of every node (node 0 is the round's state, parent -1), numbered
    breadth first with each node's children in the order they are tried; ``row[i]``: node i is
    verified (its model output is its children's target, or the readout at step 0)."""

    parent: tuple[int, ...]
    row: tuple[bool, ...]
    depth: tuple[int, ...] = field(init=False, repr=False)
    rank: tuple[int, ...] = field(init=False, repr=False)
    children: tuple[tuple[int, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.parent[0] != -1 or any(not 0 <= p < i for i, p in enumerate(self.parent) if i):
            raise ValueError(f"a tree lists parents before children, the root first: {self.parent}")
        depth, rank, children = [0], [0], [[] for _ in self.parent]
        for i, p in enumerate(self.parent[1:], start=1):
            depth.append(depth[p] + 1)
            rank.append(len(children[p]))
            children[p].append(i)
        if depth != sorted(depth):
            raise ValueError("nodes must be numbered breadth first")
        object.__setattr__(self, "depth", tuple(depth))
        object.__setattr__(self, "rank", tuple(rank))
        object.__setattr__(self, "children", tuple(map(tuple, children)))

    @property
    def size(self) -> int:
        return len(self.parent)

    @property
    def rows(self) -> int:
        return sum(self.row)

    @staticmethod
    def chain(L: int) -> "DraftTree":
        """One-draft ASD with speculation length L: L rows, one drafted child each."""
        return _chain(L)


@lru_cache(maxsize=64)
def _chain(L: int) -> DraftTree:
    return DraftTree(tuple(range(-1, L)), (True,) * L + (False,))


def first_draft_delta(rejection: float) -> float:
    """delta whose one-draft rejection rate (the total variation 2 Phi(delta/2) - 1) is `rejection`."""
    return 2 * float(torch.special.ndtri(torch.tensor((1 + rejection) / 2, dtype=torch.float64)))


@lru_cache(maxsize=4096)
def _reach(rejection: float, K: int) -> tuple[float, ...]:
    """P(child k is the accepted one | its parent is reached) = b_{k-1} - b_k, k = 1..K."""
    if rejection <= 0:
        return (1.0,) + (0.0,) * (K - 1)
    _, b, _ = residual_constants(torch.tensor(first_draft_delta(rejection)), K)
    return tuple((b[:-1] - b[1:]).tolist())


def _rejection_at(profile: float | tuple[float, ...], step: int) -> float:
    return profile if isinstance(profile, float) else profile[min(step, len(profile) - 1)]


@lru_cache(maxsize=4096)
def best_tree(row_budget: int, t: int, profile: float | tuple[float, ...] = DEFAULT_PROFILE, fresh: bool = False) -> DraftTree:
    """The tree of ``row_budget`` rows with the most expected steps per round at step t.

    A round advances one step per row it reaches, so the expected steps are the sum of the rows'
    reach probabilities; a child of rank k is reached with its parent's probability times
    b_{k-1} - b_k, at the parent's step from ``profile`` (one-draft rejection per step, or one
    number for all). Those factors fall with depth and rank, so taking candidates greedily, best
    first, is optimal. Rows stop at depth t (the readout); a row with no row below it gets one
    drafted leaf, which costs no row (more leaves would end the round the same way a rejection
    does). ``fresh``: the root's target is the anchor itself, so its first child always passes."""
    width = row_budget + 1
    parent, depth, reach_of = [-1], [0], [1.0]
    heap: list[tuple[float, int, int, int]] = []  # (-reach, insertion order, parent node, rank)

    def offer(p: int, rank: int) -> None:
        if depth[p] < t:
            rejection = 0.0 if (fresh and p == 0) else _rejection_at(profile, t - depth[p])
            probs = _reach(rejection, width)
            if rank < width and probs[rank] > 0:
                heapq.heappush(heap, (-reach_of[p] * probs[rank], len(parent) * width + rank, p, rank))

    offer(0, 0)
    while len(parent) < row_budget and heap:
        neg, _, p, rank = heapq.heappop(heap)
        parent.append(p)
        depth.append(depth[p] + 1)
        reach_of.append(-neg)
        offer(p, rank + 1)
        offer(len(parent) - 1, 0)
    return _breadth_first(parent, depth, t)


def _breadth_first(parent: list[int], depth: list[int], t: int) -> DraftTree:
    """Renumber rows breadth first (children in the order they were added, i.e. by rank) and give
    each row above the readout depth that has no child one drafted leaf."""
    kids: list[list[int]] = [[] for _ in parent]
    for i, p in enumerate(parent[1:], start=1):
        kids[p].append(i)
    order, is_row, new_parent = [0], [True], [-1]
    leaf_of: dict[int, int] = {}
    head = 0
    while head < len(order):
        old = order[head]
        if old >= 0:
            if not kids[old] and depth[old] < t:
                leaf_of[head] = len(order)
                order.append(-1)
                is_row.append(False)
                new_parent.append(head)
            for k in kids[old]:
                order.append(k)
                is_row.append(True)
                new_parent.append(head)
        head += 1
    return DraftTree(tuple(new_parent), tuple(is_row))


def expected_steps(tree: DraftTree, t: int, profile: float | tuple[float, ...] = DEFAULT_PROFILE, fresh: bool = False) -> float:
    """Expected steps of one round at step t under ``profile``: the sum of the rows' reach probabilities."""
    reach = [1.0] + [0.0] * (tree.size - 1)
    total = 0.0
    for i in range(tree.size):
        if tree.depth[i] > t:  # past the readout (a chain longer than the steps left): never reached
            continue
        if i:
            p = tree.parent[i]
            step = t - tree.depth[p]
            probs = _reach(0.0 if (fresh and p == 0) else _rejection_at(profile, step), len(tree.children[p]) + 1)
            reach[i] = reach[p] * probs[tree.rank[i]]
        if tree.row[i] and tree.depth[i] <= t:
            total += reach[i]
    return total


def check_tree_options(row_budget: int | str, tree: str, tree_profile: float | Sequence[float] | None) -> float | tuple[float, ...]:
    """Validate the tree options of ``sample_asd_tree``; returns the profile in hashable form
    (None: :data:`DEFAULT_PROFILE`)."""
    tree_profile = DEFAULT_PROFILE if tree_profile is None else tree_profile
    if row_budget != "auto" and (not isinstance(row_budget, int) or isinstance(row_budget, bool) or row_budget < 1):
        raise ValueError(f"row_budget must be an int >= 1 (rows verified per chain per round) or 'auto', got {row_budget!r}")
    if tree not in SHAPES:
        raise ValueError(f"tree={tree!r} is unknown; use one of {SHAPES}")
    values = (tree_profile,) if isinstance(tree_profile, (int, float)) else tuple(tree_profile)
    if not values or any(not isinstance(r, (int, float)) or not 0 <= r < 1 for r in values):
        raise ValueError(f"tree_profile must be a one-draft rejection rate in [0, 1), or one per schedule step; got {tree_profile!r}")
    return float(values[0]) if isinstance(tree_profile, (int, float)) else tuple(map(float, values))
