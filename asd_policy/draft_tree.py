"""Draft trees for ASD: several drafted children per step, tried in turn (design note section 8).

Two parts, both free of model calls:

* the one-node rule (recursive rejection). At a node with target p = N(mu_p, s^2 I) and proposal
  q = N(mu_q, s^2 I), children y_1..y_K ~ q are tried in order against the residuals
  r_0 = p, r_k = (r_{k-1} - q)_+ / b_k. Everything is one-dimensional along
  e = (mu_p - mu_q) / |mu_p - mu_q|: with delta = |mu_p - mu_q| / s and u = e.(y - mu_q) / s,
  ``residual_constants`` gives a_k, b_k, c_k, ``accept_child`` the log-space test, and
  ``draw_residual`` the exact draw from r_K when all K children fail (K >= 2; K = 1 keeps
  the reflection of section 3, so a chain stays bit-identical to one-draft ASD);
* tree shapes (:class:`DraftTree`): the chain of L steps, and ``best_tree``, the tree of
  ``row_budget`` verified rows that maximises the expected steps per round under a per-step
  profile of one-draft rejection rates. A shape depends only on (budget, step, profile), so it is
  fixed before the round's noise, which is all exactness needs.

The sampler that walks these trees is :mod:`asd_policy.tree_sampler`.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from asd_policy.sampler_core import Generators, _rand

__all__ = ["DraftTree", "best_tree", "residual_constants", "accept_child", "draw_residual", "one_node",
           "expected_steps", "DEFAULT_PROFILE", "SHAPES"]

#: The one-draft rejection rate per step (index t; the last value holds for every later step) that
#: trees are shaped for unless told otherwise: the shipped policies' mean over five tasks, one-draft
#: ASD L = 32 along episodes (docs/bench/tree-cpu.json, "Draft trees" in docs/benchmarks.md): most
#: drafts fail in the last steps, few (0.055-0.096) elsewhere. Step 0 is the readout, never drafted.
DEFAULT_PROFILE = (0.0, 0.9, 0.6, 0.55, 0.35, 0.35, 0.25, 0.25, 0.2, 0.15, 0.065)
SHAPES = ("best", "chain")
_TINY_DELTA = 1e-12  # below this p and q are the same Gaussian to float64 precision


# ---- the one-node rule ----------------------------------------------------------------------


def residual_constants(delta: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a_k, b_k, c_k for k = 0..K (last dimension), float64, for each delta (section 8).

    rho_k(u) = (phi(u - delta) - a_k phi(u))_+ / b_k on u > c_k; b_k is the probability that the
    first k children all fail, a_{k+1} = a_k + b_k, c_{k+1} = delta/2 + ln(a_{k+1}) / delta,
    b_{k+1} = Q(c_{k+1} - delta) - a_{k+1} Q(c_{k+1}) with Q the normal upper tail."""
    delta = delta.double().clamp_min(_TINY_DELTA)
    a, b, c = [torch.zeros_like(delta)], [torch.ones_like(delta)], [torch.full_like(delta, -math.inf)]
    for _ in range(K):
        a_next = a[-1] + b[-1]
        c_next = delta / 2 + torch.log(a_next) / delta
        upper = torch.special.ndtr(delta - c_next) - a_next * torch.special.ndtr(-c_next)
        a.append(a_next)
        c.append(c_next)
        b.append(upper.clamp_min(0))
    return torch.stack(a, -1), torch.stack(b, -1), torch.stack(c, -1)


def accept_child(delta: torch.Tensor, u: torch.Tensor, a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Child k+1 against r_k: accept iff v < (exp(delta u - delta^2/2) - a_k)_+ / b_k, i.e. in log
    space (no overflow, no division) iff ln(a_k + v b_k) < delta u - delta^2/2. k = 0 (a = 0,
    b = 1) is the one-draft test ln v < ln p/q."""
    return torch.log(a + v * b) < delta * u - delta.square() / 2


def draw_residual(delta: float, a: float, c: float, generator: Generators) -> float:
    """An exact draw of u ~ rho_K(u) proportional to phi(u - delta) - a phi(u) on u > c.

    Rejection from N(delta, 1) truncated to u > c (drawn by inversion of its upper tail), accepted
    with probability 1 - a exp(-delta u + delta^2/2). The acceptance is about b_K / Q(c - delta),
    small only where delta is (then reaching this draw has probability about b_K, so the expected
    work per node stays bounded); candidates come in doubling blocks, the first accepted is kept."""
    like = torch.empty(0, dtype=torch.float64)
    tail = torch.special.ndtr(torch.tensor(delta - c, dtype=torch.float64))
    log_a, block = math.log(a), 16
    while True:
        v = _rand((block,), generator, like)
        w = _rand((block,), generator, like)
        u = delta - torch.special.ndtri((1 - v) * tail)
        ok = torch.log1p(-w) > log_a - delta * u + delta**2 / 2
        if bool(ok.any()):
            return float(u[int(ok.long().argmax())])
        block = min(2 * block, 1 << 16)


def final_draw(delta: float, a: float, c: float, w_last: torch.Tensor, e: torch.Tensor, generator: Generators) -> torch.Tensor:
    """The node's step (in noise units, relative to mu_q) when all K >= 2 children failed: u from
    rho_K along e, the orthogonal part of the last rejected child kept (it is N(0, I) given the
    rejections, which looked at u only)."""
    u = draw_residual(delta, a, c, generator)
    return w_last - (e * w_last).sum() * e + u * e


def node_geometry(children: torch.Tensor, mu_q: torch.Tensor, mu_p: torch.Tensor, sigma: torch.Tensor):
    """(delta [n], e [n, ...], w [n, K, ...], u [n, K]) in float64: the distance of the means in
    noise units, their unit direction, the children's noise (y - mu_q) / s and its part along e."""
    s = sigma.double().reshape(-1, *([1] * (mu_q.dim() - 1)))
    d = (mu_p - mu_q).double() / s
    delta = d.flatten(1).norm(dim=1)
    e = d / delta.clamp_min(_TINY_DELTA).reshape(s.shape)
    w = (children - mu_q[:, None]).double() / s[:, None]
    return delta, e, w, (w * e[:, None]).flatten(2).sum(-1)


def one_node(children: torch.Tensor, mu_q: torch.Tensor, mu_p: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor,
             generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-node rule for n nodes at once: children [n, K, ...] drawn from N(mu_q, sigma^2 I),
    mu_q, mu_p [n, ...], sigma [n], uniforms v [n, K]. Returns (sample [n, ...] distributed as
    N(mu_p, sigma^2 I), index of the accepted child or K where all failed). K = 1 reflects."""
    from asd_policy import sampling  # the reflection lives with the chain sampler

    n, K = v.shape
    if K == 1:
        out, accepted = sampling.accept_or_reflect(children[:, 0], mu_q, mu_p, sigma, v[:, 0])
        return out, torch.where(accepted, 0, 1)
    delta, e, w, u = node_geometry(children, mu_q, mu_p, sigma)
    s = sigma.double().reshape(n, *([1] * (mu_q.dim() - 1)))
    a, b, c = residual_constants(delta, K)
    accepted = accept_child(delta[:, None], u, a[:, :K], b[:, :K], v.double())
    first = torch.where(accepted.any(1), accepted.long().argmax(1), K)
    out = children[torch.arange(n), first.clamp_max(K - 1)].clone()
    for i in (first == K).nonzero().flatten().tolist():
        step = final_draw(float(delta[i]), float(a[i, K]), float(c[i, K]), w[i, K - 1], e[i], generator)
        out[i] = (mu_q[i].double() + s[i] * step).to(out.dtype)
    return out, first


# ---- tree shapes ----------------------------------------------------------------------------


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
