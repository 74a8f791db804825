"""ASD with a tree of drafts per round (design note section 8): ``sample(method="asd_tree")``.

Each round, for every unfinished chain at step t: take its tree for t (``shape(t)``, fixed before
the round's noise), draft every node from its parent with the round's anchor (no model call),
verify every row of every chain in ONE batched model call, then walk from the root: at each node
try its children in order with the one-node rule (:mod:`asd_policy.draft_tree`); the accepted child
becomes the current node; the round ends at a leaf, at the readout row (the chain finishes), or at a
node whose children all failed (reflection for one child, the exact draw from r_K for more).
Noise per chain and round (section 7): the draft noise of every node (breadth first), one uniform
per child, then the final draw's. A chain tree (``DraftTree.chain(L)``) draws and computes exactly
what ``asd_round`` does, so it reproduces one-draft ASD draw for draw.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from asd_policy import draft_tree as dt
from asd_policy.draft_tree import DEFAULT_REJECTION, DraftTree
from asd_policy.inpaint import KnownInputs, pin_known
from asd_policy.sampler_core import Generators, Model, SamplerStats, _chains, _denoise, _index_tensor, _rand, _randn, _take_rows
from asd_policy.schedule import NoiseSchedule

__all__ = ["sample_asd_tree", "sample_tree"]

DRAFTS = ("x0", "slope", "eps")


def sample_asd_tree(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: Generators = None,
    row_budget: int = 64,
    tree: str = "best",
    tree_profile: float | tuple[float, ...] = DEFAULT_REJECTION,
    anchor: str = "reuse",
    draft: str = "x0",
    stats: SamplerStats | None = None,
    known: KnownInputs | None = None,
) -> torch.Tensor:
    """Exact DDPM sampling with autospeculative decoding and a tree of drafts per round.

    row_budget: rows verified per chain per round (one-draft ASD's is its speculation_length).
    tree="best": the shape with the most expected steps per round under tree_profile (the one-draft
    rejection rate, one number or one per schedule step t = 0..T-1); tree="chain": one draft per
    step, draw for draw ``sample_asd(speculation_length=row_budget)`` when draft="x0".
    anchor: "reuse" (the last accepted point's verified output, one call per round) or "fresh".
    draft: what the drafts hold fixed from the anchor: "x0" its clean-sample estimate (section 3),
    "eps" its noise estimate, so that each drafted step's x0hat follows the drafted state (in the
    tail x0hat tracks the state; exact either way: the proposal is fixed given the parent's state).
    """
    profile = dt.check_tree_options(row_budget, tree, tree_profile)
    if anchor not in ("reuse", "fresh"):
        raise ValueError(f"anchor={anchor!r} is unknown; use one of ('reuse', 'fresh')")
    if draft not in DRAFTS:
        raise ValueError(f"draft={draft!r} is unknown; use one of {DRAFTS}")
    stats = stats or SamplerStats("asd_tree", x.shape[0])
    fresh = anchor == "fresh"
    shape = (lambda t: DraftTree.chain(row_budget)) if tree == "chain" else (lambda t: dt.best_tree(row_budget, t, profile, fresh))
    return sample_tree(model, schedule, x, cond, generator, shape, anchor, stats, known, draft)


class _Group:
    """Chains of one round that share a tree shape: drafted together, [g, N, ...] tensors."""

    def __init__(self, tree: DraftTree, members: list[int], device: torch.device):
        self.tree, self.members = tree, members
        self.index = _index_tensor(members, device)
        self.depth = torch.tensor(tree.depth, device=device)
        self.parent = torch.tensor(tree.parent[1:], dtype=torch.long, device=device)


def sample_tree(model: Model, schedule: NoiseSchedule, x: torch.Tensor, cond: Any, generator: Generators,
                shape: Callable[[int], DraftTree], anchor: str, stats: SamplerStats, known: KnownInputs | None,
                draft: str = "x0") -> torch.Tensor:
    """The sampler loop; ``shape(t)`` is the tree of a round that starts at step t."""
    B, T, device = x.shape[0], schedule.num_steps, x.device
    t_host = [T - 1] * B
    out = torch.empty_like(x)
    # per chain: the anchor's x0hat (the first round's is 0), its epsilon-hat (the first round's is
    # x_{T-1} itself, nearly all noise), the slope of x0hat per step there (0 until known), and the
    # step it was verified at (T: none yet)
    anchors = torch.stack([torch.zeros_like(x), x.clone(), torch.zeros_like(x)], dim=1)
    anchor_step = [T] * B
    stats.tree_counters(T)

    def denoise(x_rows: torch.Tensor, t_rows: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        return torch.stack(_denoise(model, schedule, x_rows, t_rows, cond_rows, stats), dim=1)  # [rows, 2 (x0, eps), ...]

    while active := [b for b in range(B) if t_host[b] >= 0]:
        groups: dict[DraftTree, list[int]] = {}
        for b in active:
            groups.setdefault(shape(t_host[b]), []).append(b)
        groups = [_Group(tree, members, device) for tree, members in groups.items()]
        t = torch.tensor(t_host, device=device)
        x = known.fill(x, t) if known is not None else x
        if anchor == "fresh":  # as published: a sequential call for the anchor at the round's start
            act = _index_tensor(active, device)
            anchors[act, :2] = denoise(x[act], t[act], _take_rows(cond, act))
            anchor_step = [t_host[b] if b in active else s for b, s in enumerate(anchor_step)]
        for g in groups:
            n = len(g.members)
            g.z = _randn((n, g.tree.size - 1, *x.shape[1:]), _chains(generator, g.members), x)
            g.v = _rand((n, g.tree.size - 1), _chains(generator, g.members), x)
            g.t = t[g.index]
            g.anchor = _Anchor(schedule, draft, anchors[g.index], torch.tensor([anchor_step[b] for b in g.members], device=device))
            g.xs = _draft(schedule, x[g.index], g.t, g.anchor, g.z, g, known.rows(g.index) if known is not None else None)
        _verify(denoise, groups, anchors, cond, t_host, anchor)
        for g in groups:
            _accept(schedule, g, known.rows(g.index) if known is not None else None)
            accepted = g.accepted.tolist()  # the round's host synchronisation (one per shape)
            for pos, b in enumerate(g.members):
                _walk(g, pos, b, accepted[pos], t_host, x, (anchors, anchor_step, T), out, stats, generator)
    stats.steps_total += T * B
    return out


class _Anchor:
    """The x0hat a draft uses at a parent state x and step s, from what the round knew beforehand:
    draft="x0" the anchor's x0hat; "slope" that extrapolated linearly in the step from the anchor's
    step with the slope of the last two verified steps; "eps" the x0hat the anchor's epsilon-hat
    implies at (x, s). Clipped as the model's readout is."""

    def __init__(self, schedule: NoiseSchedule, draft: str, anchors: torch.Tensor, step: torch.Tensor):
        self.schedule, self.draft, self.step = schedule, draft, step
        self.x0, self.eps, self.slope = anchors[:, 0], anchors[:, 1], anchors[:, 2]

    def x0hat(self, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """x [n, k, ...] parent states, step [n, k] or [n, 1] their steps."""
        if self.draft == "x0":
            return self.x0[:, None]
        per_row = (*step.shape, *(1,) * (x.dim() - 2))
        if self.draft == "slope":
            x0 = self.x0[:, None] + (self.step[:, None] - step).reshape(per_row).to(x.dtype) * self.slope[:, None]
        else:
            abar = self.schedule.alphas_cumprod[step.clamp_min(0)].reshape(per_row)
            x0 = (x - (1 - abar).sqrt() * self.eps[:, None]) / abar.sqrt()
        return x0.clamp(-self.schedule.clip_sample_range, self.schedule.clip_sample_range) if self.schedule.clip_sample else x0


def _draft(schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, anchor: _Anchor, z: torch.Tensor, g: _Group,
           known: KnownInputs | None) -> torch.Tensor:
    """Every node's state, level by level: a child of a node x at step s is A_s x + B_s x0_a + S_s z
    (x0_a: the anchor's x0hat for x at s)."""
    n, tree = x.shape[0], g.tree
    event = (1,) * (x.dim() - 1)
    xs = x[:, None].repeat(1, tree.size, *event)
    lo = 1
    while lo < tree.size:
        d = tree.depth[lo]
        hi = tree.depth.index(d + 1) if d + 1 in tree.depth else tree.size
        step = (t - d + 1).clamp_min(0)  # the parent's step
        A, B, S = (tab[step].reshape(n, 1, *event) for tab in (schedule.A, schedule.B, schedule.S))
        parents = xs[:, list(tree.parent[lo:hi])]
        nxt = A * parents + B * anchor.x0hat(parents, step[:, None]) + S * z[:, lo - 1:hi - 1]
        if known is not None:
            rows = torch.arange(n, device=x.device).repeat_interleave(hi - lo)
            nxt = known.fill(nxt.flatten(0, 1), (t - d).repeat_interleave(hi - lo), rows).reshape(nxt.shape)
        xs[:, lo:hi] = nxt
        lo = hi
    return xs


def _verify(denoise, groups: list[_Group], anchors: torch.Tensor, cond: Any, t_host: list[int], anchor: str) -> None:
    """One batched model call over every chain's rows (those above its readout depth, the readout
    row included; in fresh mode the root is the anchor call already): g.m [g, N, 2, ...] holds
    each row's (x0hat, epsilon-hat)."""
    inputs, steps, chains, where = [], [], [], []
    for gi, g in enumerate(groups):
        g.m = anchors[g.index, None, :2].repeat(1, g.tree.size, *(1,) * (anchors.dim() - 1))
        for pos, b in enumerate(g.members):
            nodes = [i for i in range(anchor == "fresh", g.tree.size) if g.tree.row[i] and g.tree.depth[i] <= t_host[b]]
            inputs.append(g.xs[pos, nodes])
            steps += [t_host[b] - g.tree.depth[i] for i in nodes]
            chains += [b] * len(nodes)
            where += [(gi, pos, i) for i in nodes]
    if not where:
        return
    device = anchors.device
    m = denoise(torch.cat(inputs), _index_tensor(steps, device), _take_rows(cond, _index_tensor(chains, device)))
    for gi, g in enumerate(groups):
        sel = [k for k, (gj, _, _) in enumerate(where) if gj == gi]
        if sel:
            g.m[_index_tensor([where[k][1] for k in sel], device), _index_tensor([where[k][2] for k in sel], device)] = m[sel]


def _accept(schedule: NoiseSchedule, g: _Group, known: KnownInputs | None) -> None:
    """Every child's test as if it were reached (g.accepted [g, N-1]); one-child nodes also get
    their reflection (g.fixed), many-child nodes their geometry for the final draw."""
    tree, n = g.tree, g.xs.shape[0]
    event = (1,) * (g.xs.dim() - 2)
    step = g.t[:, None] - g.depth[g.parent][None]  # [n, N-1]: the step each child drafts
    A, B, S = (tab[step.clamp_min(0)].reshape(n, tree.size - 1, *event) for tab in (schedule.A, schedule.B, schedule.S))
    parents = g.xs[:, g.parent]
    mu_q = A * parents + B * g.anchor.x0hat(parents, step)
    mu_p = A * parents + B * g.m[:, g.parent, 0]
    children = g.xs[:, 1:]
    if known is not None:  # K's factors are equal under p and q: the test runs over F
        mu_q, mu_p = (pin_known(mu, children, known.mask[:, None]) for mu in (mu_q, mu_p))
    sigma = torch.where(step >= 1, S.reshape(n, -1), torch.ones_like(S.reshape(n, -1)))
    flat = lambda v: v.flatten(0, 1)  # noqa: E731
    from asd_policy import sampling  # the one-draft rule lives with the chain sampler

    g.fixed, accepted = sampling.accept_or_reflect(flat(children), flat(mu_q), flat(mu_p), flat(sigma), flat(g.v))
    g.fixed, g.accepted = g.fixed.reshape(children.shape), accepted.reshape(n, -1)
    many = [i for i in range(1, tree.size) if len(tree.children[tree.parent[i]]) > 1]
    g.geometry = {}
    if many:
        cols = torch.tensor([i - 1 for i in many], device=g.xs.device)
        ranks = torch.tensor([tree.rank[i] for i in many], device=g.xs.device)
        delta, e, w, u = dt.node_geometry(flat(children[:, cols])[:, None], flat(mu_q[:, cols]), flat(mu_p[:, cols]), flat(sigma[:, cols]))
        a, b, c = dt.residual_constants(delta, int(ranks.max()) + 1)
        r = ranks.repeat(n)[:, None]
        ok = dt.accept_child(delta, u[:, 0], a.gather(1, r)[:, 0], b.gather(1, r)[:, 0], flat(g.v[:, cols]).double())
        g.accepted[:, cols] = ok.reshape(n, -1)
        g.geometry = {"cols": many, "delta": delta.reshape(n, -1), "e": e.reshape(n, len(many), *e.shape[1:]),
                      "w": w[:, 0].reshape(n, len(many), *w.shape[2:]), "mu_q": mu_q[:, cols], "sigma": sigma[:, cols]}


def _walk(g: _Group, pos: int, b: int, accepted: list[bool], t_host: list[int], x: torch.Tensor, anchors: tuple,
          out: torch.Tensor, stats: SamplerStats, generator: Generators) -> None:
    """Chain b's path through its tree (``accepted[i - 1]``: child i passes if reached); updates
    its state, anchor, step and the stats."""
    tree, t0 = g.tree, t_host[b]
    node = 0
    stats.step_rounds[t0] += 1
    while True:
        if tree.depth[node] == t0 and tree.row[node]:  # the readout row: finished
            out[b], t_host[b] = g.m[pos, node, 0], -1
            break
        kids = tree.children[node] if tree.depth[node] < t0 else ()
        if not kids:  # a leaf: its draft is the new state; the anchor is its parent's output
            x[b], t_host[b] = g.xs[pos, node], t0 - tree.depth[node]
            _next_anchor(g, pos, b, tree.parent[node], t0, *anchors)
            break
        step = t0 - tree.depth[node]
        stats.step_checked[step] += 1
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
        stats.checked_drafts[b] += 1
        x[b] = _rejected_step(g, pos, kids, generator[b] if isinstance(generator, Sequence) else generator)
        t_host[b] = step - 1
        _next_anchor(g, pos, b, node, t0, *anchors)
        break
    stats.rounds[b] += 1


def _next_anchor(g: _Group, pos: int, b: int, node: int, t0: int, anchors: torch.Tensor, anchor_step: list[int], T: int) -> None:
    """Reuse: the outputs verified at ``node`` (the last accepted point) anchor chain b's next round;
    the slope per step from its parent's (or the previous anchor's) x0hat."""
    m, step = g.m[pos, node], t0 - g.tree.depth[node]
    if node > 0:  # over the whole path: one step's change is mostly noise, the drift shows over several
        anchors[b, 2] = (m[0] - g.m[pos, 0, 0]) / g.tree.depth[node]
    elif step < anchor_step[b] < T:  # the previous anchor was verified (T: none yet)
        anchors[b, 2] = (m[0] - anchors[b, 0]) / (anchor_step[b] - step)
    anchors[b, :2], anchor_step[b] = m, step


def _count(counter: list[int], ranks) -> None:
    for k in ranks:
        counter.extend([0] * (k + 1 - len(counter)))
        counter[k] += 1


def _rejected_step(g: _Group, pos: int, kids: tuple[int, ...], generator: Generators) -> torch.Tensor:
    """The new state when all of a node's children failed: the reflection of its one child, or
    mu_q + s * (the exact draw from r_K along e, the last child's orthogonal noise)."""
    if len(kids) == 1:
        return g.fixed[pos, kids[0] - 1]
    geo, last = g.geometry, kids[-1]
    col = geo["cols"].index(last)
    delta = geo["delta"][pos, col]
    a, _, c = dt.residual_constants(delta, len(kids))
    step = dt.final_draw(float(delta), float(a[-1]), float(c[-1]), geo["w"][pos, col], geo["e"][pos, col], generator)
    return (geo["mu_q"][pos, col].double() + geo["sigma"][pos, col].double() * step).to(g.xs.dtype)
