"""The chain samplers: sequential DDPM, DDIM, and exact autospeculative decoding (ASD), one draft per step.

The math is in ../shared/design/asd-sampler.md; the names here follow it. Every sampler is a
short function of (model, schedule, x, ...) with no hidden state, and all share one model
interface:

    model(x_t: Tensor[N, H, D], t: LongTensor[N], cond: rows aligned with x_t, or None) -> prediction

where the prediction is of the schedule's ``prediction_type`` and t is a training timestep. The
samplers walk the schedule's chain indices (``schedule.num_steps - 1`` down to 0); ``_denoise``
alone turns them into the network's timesteps (``schedule.model_timestep``: the same numbers on
the full chain, t_k = k * (T // N) on a strided one). The entry point is
``asd_policy.sampling.sample`` (:mod:`asd_policy.sampling.api`); ASD with a tree of drafts per
round is :mod:`asd_policy.sampling.tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from asd_policy.sampling.acceptance import EXACT, Acceptance
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
from asd_policy.sampling.inpaint import KnownInputs, pin_known
from asd_policy.sampling.schedule import NoiseSchedule

__all__ = ["sample_ddpm", "ddpm_step", "sample_ddim", "ddim_step", "ddim_timesteps", "check_full_chain", "sample_asd",
           "asd_round", "RoundResult", "ANCHORS"]

ANCHORS = ("reuse", "fresh")


# ---- sequential DDPM ------------------------------------------------------------------------


def sample_ddpm(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: Generators = None,
    stats: SamplerStats | None = None,
    known: KnownInputs | None = None,
) -> torch.Tensor:
    """Ancestral DDPM from x = x_{T-1}: T sequential model calls, one per step of the schedule's
    chain (known coordinates, if any, replaced by their step-t inputs before each call)."""
    stats = stats or SamplerStats("ddpm", x.shape[0])
    for step in reversed(range(schedule.num_steps)):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        x = known.fill(x, t) if known is not None else x
        x0hat, _ = _denoise(model, schedule, x, t, cond, stats)
        z = _randn(x.shape, generator, x) if step > 0 else torch.zeros_like(x)
        x = ddpm_step(schedule, x, x0hat, t, z)
    stats.rounds += schedule.num_steps
    stats.steps_total += schedule.num_steps * x.shape[0]
    return x


def ddpm_step(schedule: NoiseSchedule, x: torch.Tensor, x0hat: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x_{t-1} = A_t x_t + B_t x0hat + S_t z (S_0 = 0: the last step is the readout x0hat)."""
    A, B, S = schedule.coefficients(t, x)
    return A * x + B * x0hat + S * z


# ---- DDIM -----------------------------------------------------------------------------------


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """diffusers' "leading" spacing: 0, k, 2k, ... with k = T // N, visited from the top down."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be in [1, {num_train_timesteps}] (num_train_timesteps), got {num_inference_steps}"
        )
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio for i in reversed(range(num_inference_steps))]


def sample_ddim(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: Generators = None,
    num_inference_steps: int = 10,
    eta: float = 0.0,
    stats: SamplerStats | None = None,
    known: KnownInputs | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) over N of the T training steps; eta = 0 is deterministic.

    Matches diffusers' DDIMScheduler with its defaults (leading spacing, set_alpha_to_one=True,
    use_clipped_model_output=False). An approximation of DDPM, kept as the baseline users reach for.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    check_full_chain(schedule, "ddim")
    stats = stats or SamplerStats("ddim", x.shape[0])
    steps = ddim_timesteps(schedule.num_train_timesteps, num_inference_steps)
    ratio = schedule.num_train_timesteps // num_inference_steps
    for step in steps:
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        x = known.fill(x, t) if known is not None else x
        x0hat, eps = _denoise(model, schedule, x, t, cond, stats)
        z = _randn(x.shape, generator, x) if eta > 0 else torch.zeros_like(x)
        x = ddim_step(schedule, x0hat, eps, t, ratio, eta, z)
    stats.rounds += len(steps)
    stats.steps_total += schedule.num_train_timesteps * x.shape[0]  # it spans all T steps, N at a time
    return x


def check_full_chain(schedule: NoiseSchedule, method: str) -> None:
    """ValueError unless `schedule` is the full training chain (DDIM strides over it itself)."""
    if schedule.strided:
        raise ValueError(
            f"{method} strides over the full training schedule, but this one is already a strided DDPM sub-chain "
            f"(num_inference_steps={schedule.num_inference_steps} of num_train_timesteps={schedule.num_train_timesteps}); "
            f"sample it with ddpm or asd, or use DDIM on the full schedule (num_inference_steps=None)"
        )


def ddim_step(
    schedule: NoiseSchedule, x0hat: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, ratio: int, eta: float, z: torch.Tensor
) -> torch.Tensor:
    """x_{t-ratio} = sqrt(abar_prev) x0hat + sqrt(1 - abar_prev - std^2) eps + std z, abar_prev = 1 below t = 0."""
    abar = schedule.alphas_cumprod
    shape = (-1,) + (1,) * (x0hat.dim() - 1)
    a_t = abar[t].reshape(shape)
    a_prev = torch.where(t >= ratio, abar[(t - ratio).clamp_min(0)], torch.ones_like(abar[t])).reshape(shape)
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    return a_prev.sqrt() * x0hat + (1 - a_prev - std**2).clamp_min(0).sqrt() * eps + std * z


# ---- autospeculative decoding ---------------------------------------------------------------


def sample_asd(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: Generators = None,
    speculation_length: int = 16,
    anchor: str = "reuse",
    stats: SamplerStats | None = None,
    known: KnownInputs | None = None,
    acceptance: Acceptance = EXACT,
) -> torch.Tensor:
    """Exact DDPM sampling with autospeculative decoding (Hu et al. 2025); design note section 3.
    (Several drafts per step: method "asd_tree", asd_policy/sampling/tree.py.)

    Each round, for every unfinished chain at step t with anchor m_a:
      1. draft L steps with the anchor as the model output (no model call);
      2. verify: one batched model call on the L drafted inputs of every chain;
      3. accept drafts in order while p/q allows; reflect the first rejected one and stop there.
    anchor="fresh": m_a = x0hat(x, t) from a sequential call at the round's start (as published).
    anchor="reuse": m_a = the previous round's model output at its last accepted input (one call
    per round). The first reuse round drafts with m_a = 0: any anchor fixed before the round's noise
    keeps the output exact, and at t = T-1 the full chain's step barely depends on x0hat (B_t ~ 0).
    Chains finish independently and finished chains cost nothing: each round evaluates only the
    drafted rows of unfinished chains. One host synchronisation per round.
    Known coordinates (section 6): every drafted input carries its step's known values and the
    accept test runs over the free coordinates only.
    acceptance: the accept rule (:mod:`asd_policy.sampling.acceptance`); only a planted bug changes it.
    """
    L = _check_asd_arguments(speculation_length, anchor)
    stats = stats or SamplerStats("asd", x.shape[0])
    device, T = x.device, schedule.num_steps
    t = torch.full((x.shape[0],), T - 1, dtype=torch.long, device=device)  # -1 once finished
    m_anchor = torch.zeros_like(x)
    out = torch.empty_like(x)
    rounds, accepted_drafts, checked_drafts = (torch.zeros(x.shape[0], dtype=torch.long, device=device) for _ in range(3))
    first_row = 1 if anchor == "fresh" else 0  # in fresh mode row 0 is the anchor call itself

    def denoise(x_rows: torch.Tensor, t_rows: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        return _denoise(model, schedule, x_rows, t_rows, cond_rows, stats)[0]

    t_host = t.tolist()
    while active_list := [b for b, tb in enumerate(t_host) if tb >= 0]:
        active = _index_tensor(active_list, device)
        # Rows j of chain i verify the step from t_i - j; only steps >= 0 exist, so chains near the
        # end verify fewer rows. Built on the host from t_host: no synchronisation needed.
        rows = [(i, j) for i, b in enumerate(active_list) for j in range(first_row, min(L, t_host[b] + 1))]
        row_chain, row_j = (_index_tensor([r[k] for r in rows], device) for k in (0, 1))
        n = len(active_list)
        chains = _chains(generator, active_list)  # per-chain streams: z then u, as with B = 1
        z = _randn((n, L, *x.shape[1:]), chains, x)
        u = _rand((n, L), chains, x)
        r = asd_round(denoise, schedule, x[active], t[active], m_anchor[active], _take_rows(cond, active), z, u, anchor,
                      (row_chain, row_j), known.rows(active) if known is not None else None, acceptance)
        x[active], t[active], m_anchor[active] = r.x, r.t, r.anchor
        out[active] = torch.where(r.finished.reshape(n, *([1] * (x.dim() - 1))), r.value, out[active])
        rounds[active] += 1
        accepted_drafts[active] += r.accepted
        checked_drafts[active] += r.checked
        t_host = t.tolist()  # the round's one host synchronisation

    stats.rounds += rounds.cpu()
    stats.accepted_drafts += accepted_drafts.cpu()
    stats.checked_drafts += checked_drafts.cpu()
    stats.steps_total += T * x.shape[0]
    return out


class RoundResult(NamedTuple):
    """What one ASD round leaves for n chains (tensors with n rows)."""

    x: torch.Tensor  # the new states
    t: torch.Tensor  # their steps (-1: finished)
    anchor: torch.Tensor  # the next round's reuse anchor
    value: torch.Tensor  # x0 of the chains that finished in this round (meaningless elsewhere)
    finished: torch.Tensor  # bool: the chain finished in this round
    accepted: torch.Tensor  # drafts accepted as drawn
    checked: torch.Tensor  # drafted steps that reached the accept test (the accepted ones and the reflected one)


Denoise = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x rows, step rows, cond rows) -> x0hat rows


def asd_round(
    denoise: Denoise,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    t: torch.Tensor,
    m_anchor: torch.Tensor,
    cond: Any,
    z: torch.Tensor,
    u: torch.Tensor,
    anchor: str,
    rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    known: KnownInputs | None = None,
    acceptance: Acceptance = EXACT,
) -> RoundResult:
    """One draft-verify-accept round for n chains at once; pure tensor code (no host sync), so a
    fixed-shape round can be captured in a CUDA graph.

    x [n, ...] states at steps t [n] (-1: finished; such chains are left as they are), m_anchor
    [n, ...] the reuse anchors, z [n, L, ...] draft noise, u [n, L] uniforms for the accept test.
    rows: the (chain, j) index tensors of the rows to verify (may be empty), or None for every row
    j >= (1 if fresh else 0) of every chain: the fixed shape of the CUDA-graph path.
    known: the known inputs of these n chains (inpainting), or None.
    """
    L = u.shape[1]
    if known is not None:
        x = known.fill(x, t)
    m_a = denoise(x, t.clamp_min(0), cond) if anchor == "fresh" else m_anchor
    steps = t[:, None] - torch.arange(L, device=x.device)  # [n, L]: row j drafts the step from t - j
    coefficients = tuple(tab[steps.clamp_min(0)].reshape(*steps.shape, *(1,) * (x.dim() - 1))
                         for tab in (schedule.A, schedule.B, schedule.S))
    xhat = _draft_chain(x, t, m_a, z, coefficients, known)
    first_row = 1 if anchor == "fresh" else 0  # fresh: row 0 is the anchor call itself
    if rows is None:
        m = _verify_every_row(denoise, xhat, steps, m_a, cond, first_row)
    else:
        m = _verify_rows(denoise, xhat, steps, m_a, cond, rows)
    return _accept_prefix(x, t, xhat, m_a, m, steps, coefficients, u, known, acceptance)


def _draft_chain(x: torch.Tensor, t: torch.Tensor, m_a: torch.Tensor, z: torch.Tensor, coefficients, known) -> torch.Tensor:
    """Step 1, draft: xhat_{j+1} = A xhat_j + B m_a + S z_j at step t - j (the anchor stands in for
    x0hat). Returns xhat [n, L+1, ...]; xhat[:, j] is the input of step t - j."""
    A, B, S = coefficients
    drafts = [x]
    for j in range(z.shape[1]):
        nxt = A[:, j] * drafts[j] + B[:, j] * m_a + S[:, j] * z[:, j]
        drafts.append(known.fill(nxt, t - j - 1) if known is not None else nxt)
    return torch.stack(drafts, dim=1)


def _verify_every_row(denoise: Denoise, xhat: torch.Tensor, steps: torch.Tensor, m_a: torch.Tensor, cond: Any,
                      first_row: int) -> torch.Tensor:
    """Step 2 at a fixed shape: m_j = x0hat(xhat_j, t - j) for every row of every chain, in one call
    (finished chains and steps below 0 ride along; their rows are never used). m [n, L, ...]."""
    n, L = steps.shape
    chain = torch.arange(n, device=xhat.device).repeat_interleave(L - first_row)
    m_rows = denoise(xhat[:, first_row:L].flatten(0, 1), steps[:, first_row:].clamp_min(0).flatten(), _take_rows(cond, chain))
    m_rows = m_rows.reshape(n, L - first_row, *xhat.shape[2:])
    return torch.cat([m_a[:, None], m_rows], dim=1) if first_row else m_rows


def _verify_rows(denoise: Denoise, xhat: torch.Tensor, steps: torch.Tensor, m_a: torch.Tensor, cond: Any,
                 rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Step 2 on the given (chain, j) rows only, in one call (none when ``rows`` is empty); the
    other rows keep the anchor, which no accept test reads. m [n, L, ...]."""
    n, L = steps.shape
    m = m_a[:, None].expand(n, L, *xhat.shape[2:]).clone()
    row_chain, row_j = rows
    if row_chain.numel():
        m[row_chain, row_j] = denoise(xhat[row_chain, row_j], steps[row_chain, row_j], _take_rows(cond, row_chain))
    return m


def _accept_prefix(x: torch.Tensor, t: torch.Tensor, xhat: torch.Tensor, m_a: torch.Tensor, m: torch.Tensor,
                   steps: torch.Tensor, coefficients, u: torch.Tensor, known, acceptance: Acceptance) -> RoundResult:
    """Step 3: accept or reflect every noisy drafted step at once; a chain keeps its prefix up to
    its first rejection, whose reflection is its last step."""
    n, L = steps.shape
    A, B, S = coefficients
    event = (1,) * (x.dim() - 1)  # broadcasts a per-row coefficient over one sample
    mu_q = A * xhat[:, :L] + B * m_a[:, None]
    mu_p = A * xhat[:, :L] + B * m
    if known is not None:  # K's factors are equal under p and q: the test runs over F
        mu_q, mu_p = (pin_known(mu, xhat[:, 1:], known.mask[:, None]) for mu in (mu_q, mu_p))
    noisy = steps >= 1  # the readout at t = 0 is deterministic and never speculated
    sigma = torch.where(noisy, S.reshape(n, L), torch.ones_like(S.reshape(n, L)))
    fixed, accepted = acceptance.reflect(xhat[:, 1:].flatten(0, 1), mu_q.flatten(0, 1), mu_p.flatten(0, 1), sigma.flatten(), u.flatten())
    fixed, accepted = fixed.reshape(xhat[:, 1:].shape), accepted.reshape(n, L)
    rejected = noisy & ~accepted
    any_rejected = rejected.any(dim=1)
    num_noisy = noisy.sum(dim=1)
    first_rejected = torch.where(any_rejected, rejected.long().argmax(dim=1), num_noisy)  # = drafts accepted
    steps_taken = first_rejected + any_rejected.long()  # the reflected step is taken too

    chain = torch.arange(n, device=x.device)
    active = t >= 0
    # New state: the reflected draft at the first rejection, else the last accepted draft.
    x_new = torch.where((steps_taken > 0).reshape(n, *event), fixed[chain, (steps_taken - 1).clamp_min(0)], x)
    # A chain finishes when it accepted every noisy step and its readout row (t = 0) was verified.
    finished = active & ~any_rejected & (t < L)
    value = m[chain, t.clamp(0, L - 1)]
    # Reuse: the model output at the last accepted input anchors the next round (one step stale).
    m_next = m[chain, torch.where(any_rejected, first_rejected, (num_noisy - 1).clamp_min(0))]
    t_new = torch.where(finished, torch.full_like(t, -1), torch.where(active, t - steps_taken, t))
    return RoundResult(x_new, t_new, m_next, value, finished, first_rejected, steps_taken)


def _check_asd_arguments(speculation_length: int, anchor: str) -> int:
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r} is unknown; use one of {ANCHORS}")
    if not isinstance(speculation_length, int) or isinstance(speculation_length, bool) or speculation_length < 1:
        raise ValueError(f"speculation_length must be an int >= 1, got {speculation_length!r}")
    return speculation_length
