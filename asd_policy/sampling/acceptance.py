"""The accept rules of exact ASD: what keeps a speculated step a draw from DDPM's own step.

* one draft per step (design note section 3): ``accept_or_reflect`` keeps a draft from
  q = N(mu_q, s^2 I) with probability min(1, p/q) and otherwise reflects it through the hyperplane
  bisecting mu_q and mu_p, so the step is an exact draw from p = N(mu_p, s^2 I);
* several children per node (section 8, recursive rejection): children y_1..y_K ~ q are tried in
  order against the residuals r_0 = p, r_k = (r_{k-1} - q)_+ / b_k. Everything is one-dimensional
  along e = (mu_p - mu_q) / |mu_p - mu_q|: with delta = |mu_p - mu_q| / s and u = e.(y - mu_q) / s,
  ``residual_constants`` gives a_k, b_k, c_k, ``accept_child`` the log-space test, and
  ``draw_residual`` the exact draw from r_K when all K children fail (K >= 2; K = 1 keeps the
  reflection, so a chain stays bit-identical to one-draft ASD). ``one_node`` is the whole rule.

The samplers take these rules as one argument, :class:`Acceptance` (default :data:`EXACT`), as
k-diffusion's samplers take their ``noise_sampler``: a planted bug (tests, the exactness check's
power study, ``asd_policy.checks.planted``) is passed in, never patched into a module.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from asd_policy.sampling.base import Generators, _rand

__all__ = ["Acceptance", "EXACT", "accept_or_reflect", "residual_constants", "accept_child", "draw_residual",
           "final_draw", "node_geometry", "one_node"]

_TINY_DELTA = 1e-12  # below this p and q are the same Gaussian to float64 precision


# ---- one draft per step (section 3) ---------------------------------------------------------


def accept_or_reflect(
    draft: torch.Tensor, mu_q: torch.Tensor, mu_p: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn draws from N(mu_q, sigma^2 I) into exact draws from N(mu_p, sigma^2 I).

    Rows are the leading dimension; the trailing dimensions are one Gaussian event. `sigma` and the
    uniforms `u` hold one value per row. Accept the draft with probability min(1, p/q); otherwise
    reflect it through the hyperplane bisecting mu_q and mu_p, which maps q's excess onto p's
    deficit. Returns (sample, accepted).
    """
    event_dims = tuple(range(1, draft.dim()))
    w = draft - mu_q
    d = mu_p - mu_q
    s2 = sigma.reshape(-1, *([1] * len(event_dims))) ** 2
    # log p/q = (|draft - mu_q|^2 - |draft - mu_p|^2) / (2 s^2), expanded as d.(w - d/2) / s^2 so that
    # nothing cancels when mu_p and mu_q are close.
    log_ratio = (d * (w - d / 2) / s2).sum(event_dims)
    accepted = torch.log(u) < log_ratio
    d_norm = d.square().sum(event_dims, keepdim=True).sqrt()
    e = d / d_norm.clamp_min(torch.finfo(d.dtype).tiny)  # d = 0 only where the draft is always accepted
    reflected = mu_p + w - 2 * (e * w).sum(event_dims, keepdim=True) * e
    keep = accepted.reshape(-1, *([1] * len(event_dims)))
    return torch.where(keep, draft, reflected), accepted


# ---- several children per node (section 8) --------------------------------------------------


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
             generator: Generators = None, acceptance: "Acceptance | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-node rule for n nodes at once: children [n, K, ...] drawn from N(mu_q, sigma^2 I),
    mu_q, mu_p [n, ...], sigma [n], uniforms v [n, K]. Returns (sample [n, ...] distributed as
    N(mu_p, sigma^2 I), index of the accepted child or K where all failed). K = 1 reflects."""
    rules = acceptance or EXACT
    n, K = v.shape
    if K == 1:
        out, accepted = rules.reflect(children[:, 0], mu_q, mu_p, sigma, v[:, 0])
        return out, torch.where(accepted, 0, 1)
    delta, e, w, u = node_geometry(children, mu_q, mu_p, sigma)
    s = sigma.double().reshape(n, *([1] * (mu_q.dim() - 1)))
    a, b, c = residual_constants(delta, K)
    accepted = rules.accept_child(delta[:, None], u, a[:, :K], b[:, :K], v.double())
    first = torch.where(accepted.any(1), accepted.long().argmax(1), K)
    out = children[torch.arange(n), first.clamp_max(K - 1)].clone()
    for i in (first == K).nonzero().flatten().tolist():
        step = rules.final_draw(float(delta[i]), float(a[i, K]), float(c[i, K]), w[i, K - 1], e[i], generator)
        out[i] = (mu_q[i].double() + s[i] * step).to(out.dtype)
    return out, first


class Acceptance(NamedTuple):
    """The rules the exact samplers apply; replace one only to plant a bug."""

    reflect: Callable = accept_or_reflect  # one child: keep or reflect (section 3)
    accept_child: Callable = accept_child  # child k+1 of a node against r_k (section 8)
    final_draw: Callable = final_draw  # every child of a node failed: the draw from r_K


#: The correct rules, every sampler's default.
EXACT = Acceptance()
