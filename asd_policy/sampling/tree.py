"""ASD with a tree of drafts per round (design note section 8): ``sample(method="asd_tree")``.

Each round, for every unfinished chain at step t: take its tree for t (``shape(t)``, fixed before
the round's noise), draft every node from its parent with the round's anchor (no model call),
verify every row of every chain in ONE batched model call, then walk from the root: at each node
try its children in order with the one-node rule (:mod:`asd_policy.sampling.acceptance`); the accepted child
becomes the current node; the round ends at a leaf, at the readout row (the chain finishes), or at a
node whose children all failed (reflection for one child, the exact draw from r_K for more).
Noise per chain and round (section 7): the draft noise of every node (breadth first), one uniform
per child, then the final draw's. A chain tree (``DraftTree.chain(L)``) draws and computes exactly
what ``asd_round`` does, so it reproduces one-draft ASD draw for draw.
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

import asd_policy.sampling.draft_tree as dt
from asd_policy.sampling.acceptance import (
    EXACT,
    Acceptance,
    node_geometry,
    residual_constants,
)
from asd_policy.sampling.base import (
    Generators,
    Model,
    SamplerStats,
    _chains,
    _denoise,
    _index_tensor,
    _rand,
    _randn,
    _take_rows,
)
from asd_policy.sampling.chain import sample_asd
from asd_policy.sampling.draft_tree import DraftTree
from asd_policy.sampling.inpaint import KnownInputs, pin_known
from asd_policy.sampling.row_budget import (
    CANDIDATES,
    KINDS,
    choose_shape,
    row_cost_curve,
    tree_for,
)
from asd_policy.sampling.schedule import NoiseSchedule

__all__ = ["sample_asd_tree", "sample_tree"]


def sample_asd_tree(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: Generators = None,
    row_budget: int | str = 64,
    tree: str = "best",
    tree_profile: float | tuple[float, ...] | None = None,
    anchor: str = "reuse",
    stats: SamplerStats | None = None,
    known: KnownInputs | None = None,
    acceptance: Acceptance = EXACT,
) -> torch.Tensor:
    """Exact DDPM sampling with autospeculative decoding and a tree of drafts per round.

    row_budget: rows verified per chain per round (one-draft ASD's is its speculation_length), or
    "auto": the shape (a chain or a best tree, and its rows) with the least expected chunk latency on
    this device for this batch (asd_policy/sampling/row_budget.py; it times the model and the sampler's own
    work once per model, device and shape, so the shape, and with it a seeded sample, can differ
    between batch sizes and processes; exact either way). With tree="chain" auto picks among chains only.
    tree="best": the shape with the most expected steps per round under tree_profile (the one-draft
    rejection rate: one number, or one per step t = 0, 1, ..., the last holding for later steps;
    None: the shipped policies' measured profile, draft_tree.DEFAULT_PROFILE); tree="chain": one draft per
    step, draw for draw ``sample_asd(speculation_length=row_budget)``.
    anchor: "reuse" (the last accepted point's verified x0hat, one call per round) or "fresh".
    acceptance: the accept rules (:mod:`asd_policy.sampling.acceptance`); only a planted bug changes them.
    """
    profile = dt.check_tree_options(row_budget, tree, tree_profile)
    if anchor not in ("reuse", "fresh"):
        raise ValueError(f"anchor={anchor!r} is unknown; use one of ('reuse', 'fresh')")
    stats = stats or SamplerStats("asd_tree", x.shape[0])
    if row_budget == "auto":
        tree, row_budget = _auto_shape(model, schedule, x, cond, profile, anchor, (tree,) if tree == "chain" else KINDS)
        if tree == "chain":  # the same draws as a chain tree, with less of the sampler's own work per round
            return sample_asd(model, schedule, x, cond, generator, row_budget, anchor, stats, known, acceptance)
    fresh = anchor == "fresh"
    shape = (lambda t: DraftTree.chain(row_budget)) if tree == "chain" else (lambda t: dt.best_tree(row_budget, t, profile, fresh))
    return sample_tree(model, schedule, x, cond, generator, shape, anchor, stats, known, acceptance)


class _Group:
    """Chains of one round that share a tree shape: drafted together, [g, N, ...] tensors."""

    def __init__(self, tree: DraftTree, members: list[int], device: torch.device):
        self.tree, self.members = tree, members
        self.index = _index_tensor(members, device)
        self.depth = torch.tensor(tree.depth, device=device)
        self.parent = torch.tensor(tree.parent[1:], dtype=torch.long, device=device)


def _auto_shape(model: Model, schedule: NoiseSchedule, x: torch.Tensor, cond: Any, profile, anchor: str,
                kinds: Sequence[str]) -> tuple[str, int]:
    """row_budget="auto": time the model on 1, 2, 4, ... rows and the sampler's own work per round
    (for the candidates still in the running) and pick the shape. All three are cached with the
    model (a weak reference: a freed model's numbers go with it, never to a new model at the same
    address) per device, batch shape and settings; recomputing the choice costs more than a round."""
    cache = _AUTO.setdefault(model, {})
    shape_key = (x.device.type, x.device.index, tuple(x.shape), schedule.num_steps)
    choice_key = (*shape_key, profile, anchor, tuple(kinds))
    if choice_key in cache:
        return cache[choice_key]

    def call(x_rows: torch.Tensor, t_rows: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        return model(x_rows, schedule.model_timestep(t_rows), cond_rows)

    curve_key = ("curve", *shape_key)
    if curve_key not in cache:
        t = torch.full((1,), schedule.num_steps - 1, dtype=torch.long, device=x.device)
        one = _take_rows(cond, torch.zeros(1, dtype=torch.long, device=x.device))
        cache[curve_key] = row_cost_curve(call, x[:1], t, one, _take_rows, min(x.shape[0] * max(CANDIDATES), 512))

    def overhead_ms(kind: str, rows: int) -> float:
        key = ("overhead", *shape_key, kind, rows, profile, anchor)
        if key not in cache:
            cache[key] = _round_overhead_ms(schedule, x, kind, rows, profile, anchor)
        return cache[key]

    cache[choice_key] = choose_shape(cache[curve_key], x.shape[0], schedule.num_steps, profile, overhead_ms, kinds)
    return cache[choice_key]


_AUTO: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _round_overhead_ms(schedule: NoiseSchedule, x: torch.Tensor, kind: str, rows: int, profile, anchor: str) -> float:
    """ms per round of the sampler's own work (drafts, tests, walk) for a batch shaped like x: the
    sampler run once with a model that costs nothing (it predicts zeros), divided by its rounds."""
    def free(x_rows: torch.Tensor, t_rows: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        return torch.zeros_like(x_rows)

    stats = SamplerStats("asd_tree", x.shape[0])
    start = time.perf_counter()
    noise = torch.Generator(x.device).manual_seed(0)
    if kind == "chain":  # auto runs its chains with one-draft ASD's own loop
        sample_asd(free, schedule, torch.zeros_like(x), None, noise, rows, anchor, stats, None)
    else:
        sample_tree(free, schedule, torch.zeros_like(x), None, noise, lambda t: tree_for(kind, rows, t, profile), anchor, stats, None)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) * 1e3 / max(1, int(stats.rounds.max()))


def sample_tree(model: Model, schedule: NoiseSchedule, x: torch.Tensor, cond: Any, generator: Generators,
                shape: Callable[[int], DraftTree], anchor: str, stats: SamplerStats, known: KnownInputs | None,
                acceptance: Acceptance = EXACT) -> torch.Tensor:
    """The sampler loop; ``shape(t)`` is the tree of a round that starts at step t."""
    B, T, device = x.shape[0], schedule.num_steps, x.device
    t_host = [T - 1] * B
    out = torch.empty_like(x)
    m_anchor = torch.zeros_like(x)  # the first round's anchor is 0, as in sample_asd
    stats.tree_counters(T)

    def denoise(x_rows: torch.Tensor, t_rows: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        return _denoise(model, schedule, x_rows, t_rows, cond_rows, stats)[0]

    while active := [b for b in range(B) if t_host[b] >= 0]:
        groups: dict[DraftTree, list[int]] = {}
        for b in active:
            groups.setdefault(shape(t_host[b]), []).append(b)
        groups = [_Group(tree, members, device) for tree, members in groups.items()]
        t = torch.tensor(t_host, device=device)
        x = known.fill(x, t) if known is not None else x
        if anchor == "fresh":  # as published: a sequential call for the anchor at the round's start
            act = _index_tensor(active, device)
            m_anchor[act] = denoise(x[act], t[act], _take_rows(cond, act))
        for g in groups:
            n = len(g.members)
            g.z = _randn((n, g.tree.size - 1, *x.shape[1:]), _chains(generator, g.members), x)
            g.v = _rand((n, g.tree.size - 1), _chains(generator, g.members), x)
            g.t, g.m_a = t[g.index], m_anchor[g.index]
            g.xs = _draft(schedule, x[g.index], g.t, g.m_a, g.z, g, known.rows(g.index) if known is not None else None)
        _verify(denoise, groups, m_anchor, cond, t_host, anchor)
        for g in groups:
            _accept(schedule, g, known.rows(g.index) if known is not None else None, acceptance)
            accepted = g.accepted.tolist()  # the round's host synchronisation (one per shape)
            for pos, b in enumerate(g.members):
                _walk(g, pos, b, accepted[pos], t_host, x, m_anchor, out, stats, generator, acceptance)
    stats.steps_total += T * B
    return out


def _draft(schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, m_a: torch.Tensor, z: torch.Tensor, g: _Group,
           known: KnownInputs | None) -> torch.Tensor:
    """Every node's state, level by level: a child of a node x at step s is A_s x + B_s m_a + S_s z."""
    n, tree = x.shape[0], g.tree
    event = (1,) * (x.dim() - 1)
    xs = x[:, None].repeat(1, tree.size, *event)
    lo = 1
    while lo < tree.size:
        d = tree.depth[lo]
        hi = tree.depth.index(d + 1) if d + 1 in tree.depth else tree.size
        step = (t - d + 1).clamp_min(0)  # the parent's step
        A, B, S = (tab[step].reshape(n, 1, *event) for tab in (schedule.A, schedule.B, schedule.S))
        nxt = A * xs[:, list(tree.parent[lo:hi])] + B * m_a[:, None] + S * z[:, lo - 1:hi - 1]
        if known is not None:
            rows = torch.arange(n, device=x.device).repeat_interleave(hi - lo)
            nxt = known.fill(nxt.flatten(0, 1), (t - d).repeat_interleave(hi - lo), rows).reshape(nxt.shape)
        xs[:, lo:hi] = nxt
        lo = hi
    return xs


def _verify(denoise, groups: list[_Group], m_anchor: torch.Tensor, cond: Any, t_host: list[int], anchor: str) -> None:
    """One batched model call over every chain's rows (those above its readout depth, the readout
    row included; in fresh mode the root is the anchor call already): g.m [g, N, ...]."""
    inputs, steps, chains, where = [], [], [], []
    for gi, g in enumerate(groups):
        g.m = m_anchor[g.index][:, None].repeat(1, g.tree.size, *(1,) * (m_anchor.dim() - 1))
        for pos, b in enumerate(g.members):
            nodes = [i for i in range(anchor == "fresh", g.tree.size) if g.tree.row[i] and g.tree.depth[i] <= t_host[b]]
            inputs.append(g.xs[pos, nodes])
            steps += [t_host[b] - g.tree.depth[i] for i in nodes]
            chains += [b] * len(nodes)
            where += [(gi, pos, i) for i in nodes]
    if not where:
        return
    device = m_anchor.device
    m = denoise(torch.cat(inputs), _index_tensor(steps, device), _take_rows(cond, _index_tensor(chains, device)))
    for gi, g in enumerate(groups):
        sel = [k for k, (gj, _, _) in enumerate(where) if gj == gi]
        if sel:
            g.m[_index_tensor([where[k][1] for k in sel], device), _index_tensor([where[k][2] for k in sel], device)] = m[sel]


def _accept(schedule: NoiseSchedule, g: _Group, known: KnownInputs | None, acceptance: Acceptance) -> None:
    """Every child's test as if it were reached (g.accepted [g, N-1]); one-child nodes also get
    their reflection (g.fixed), many-child nodes their geometry for the final draw."""
    tree, n = g.tree, g.xs.shape[0]
    event = (1,) * (g.xs.dim() - 2)
    step = g.t[:, None] - g.depth[g.parent][None]  # [n, N-1]: the step each child drafts
    A, B, S = (tab[step.clamp_min(0)].reshape(n, tree.size - 1, *event) for tab in (schedule.A, schedule.B, schedule.S))
    parents = g.xs[:, g.parent]
    mu_q = A * parents + B * g.m_a[:, None]
    mu_p = A * parents + B * g.m[:, g.parent]
    children = g.xs[:, 1:]
    if known is not None:  # K's factors are equal under p and q: the test runs over F
        mu_q, mu_p = (pin_known(mu, children, known.mask[:, None]) for mu in (mu_q, mu_p))
    sigma = torch.where(step >= 1, S.reshape(n, -1), torch.ones_like(S.reshape(n, -1)))
    flat = lambda v: v.flatten(0, 1)  # noqa: E731
    g.fixed, accepted = acceptance.reflect(flat(children), flat(mu_q), flat(mu_p), flat(sigma), flat(g.v))
    g.fixed, g.accepted = g.fixed.reshape(children.shape), accepted.reshape(n, -1)
    many = [i for i in range(1, tree.size) if len(tree.children[tree.parent[i]]) > 1]
    g.geometry = {}
    if many:
        cols = torch.tensor([i - 1 for i in many], device=g.xs.device)
        ranks = torch.tensor([tree.rank[i] for i in many], device=g.xs.device)
        delta, e, w, u = node_geometry(flat(children[:, cols])[:, None], flat(mu_q[:, cols]), flat(mu_p[:, cols]), flat(sigma[:, cols]))
        a, b, c = residual_constants(delta, int(ranks.max()) + 1)
        r = ranks.repeat(n)[:, None]
        ok = acceptance.accept_child(delta, u[:, 0], a.gather(1, r)[:, 0], b.gather(1, r)[:, 0], flat(g.v[:, cols]).double())
        g.accepted[:, cols] = ok.reshape(n, -1)
        g.geometry = {"cols": many, "delta": delta.reshape(n, -1), "e": e.reshape(n, len(many), *e.shape[1:]),
                      "w": w[:, 0].reshape(n, len(many), *w.shape[2:]), "mu_q": mu_q[:, cols], "sigma": sigma[:, cols],
                      "a": a.reshape(n, len(many), -1), "c": c.reshape(n, len(many), -1)}  # k = 0..max rank + 1


def _walk(g: _Group, pos: int, b: int, accepted: list[bool], t_host: list[int], x: torch.Tensor, m_anchor: torch.Tensor,
          out: torch.Tensor, stats: SamplerStats, generator: Generators, acceptance: Acceptance) -> None:
    """Chain b's path through its tree (``accepted[i - 1]``: child i passes if reached); updates
    its state, anchor, step and the stats."""
    tree, t0 = g.tree, t_host[b]
    node = 0
    stats.step_rounds[t0] += 1
    while True:
        if tree.depth[node] == t0 and tree.row[node]:  # the readout row: finished
            out[b], t_host[b] = g.m[pos, node], -1
            break
        kids = tree.children[node] if tree.depth[node] < t0 else ()
        if not kids:  # a leaf: its draft is the new state; the anchor is its parent's output
            x[b], m_anchor[b], t_host[b] = g.xs[pos, node], g.m[pos, tree.parent[node]], t0 - tree.depth[node]
            break
        step = t0 - tree.depth[node]
        stats.step_checked[step] += 1
        _count(stats.depth_checked, [tree.depth[node]])
        first = next((k for k in kids if accepted[k - 1]), None)
        tried = len(kids) if first is None else tree.rank[first] + 1
        _count(stats.child_tried, range(tried))
        if first is not None:
            _count(stats.child_accepted, [tree.rank[first]])
            stats.accepted_drafts[b] += 1
            stats.checked_drafts[b] += 1
            node = first
            continue
        stats.step_rejected[step] += 1  # every child failed: draw from r_K, the round ends here
        _count(stats.depth_rejected, [tree.depth[node]])
        stats.checked_drafts[b] += 1
        x[b] = _rejected_step(g, pos, kids, generator[b] if isinstance(generator, Sequence) else generator, acceptance)
        m_anchor[b], t_host[b] = g.m[pos, node], step - 1  # reuse: the last accepted point's output
        break
    stats.rounds[b] += 1


def _count(counter: list[int], ranks) -> None:
    for k in ranks:
        counter.extend([0] * (k + 1 - len(counter)))
        counter[k] += 1


def _rejected_step(g: _Group, pos: int, kids: tuple[int, ...], generator: Generators, acceptance: Acceptance) -> torch.Tensor:
    """The new state when all of a node's children failed: the reflection of its one child, or
    mu_q + s * (the exact draw from r_K along e, the last child's orthogonal noise)."""
    if len(kids) == 1:
        return g.fixed[pos, kids[0] - 1]
    geo, last, K = g.geometry, kids[-1], len(kids)
    col = geo["cols"].index(last)  # the last child's rank is K - 1, so the constants up to K were computed
    a, c = geo["a"][pos, col, K], geo["c"][pos, col, K]
    step = acceptance.final_draw(float(geo["delta"][pos, col]), float(a), float(c), geo["w"][pos, col], geo["e"][pos, col], generator)
    return (geo["mu_q"][pos, col].double() + geo["sigma"][pos, col].double() * step).to(g.xs.dtype)
