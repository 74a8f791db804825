"""Action samplers: sequential DDPM, DDIM, and exact autospeculative decoding (ASD).

The math is in ../shared/design/asd-sampler.md; the names here follow it. Every sampler is a
short function of (model, schedule, x, ...) with no hidden state, and all share one model
interface:

    model(x_t: Tensor[N, H, D], t: LongTensor[N], cond: rows aligned with x_t, or None) -> prediction

where the prediction is of the schedule's ``prediction_type`` and t is a training timestep. The
samplers walk the schedule's chain indices (``schedule.num_steps - 1`` down to 0); ``_denoise``
alone turns them into the network's timesteps (``schedule.model_timestep``: the same numbers on
the full chain, t_k = k * (T // N) on a strided one). ``sample`` is the entry point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from asd_policy.inpaint import Known, KnownInputs, known_inputs, pin_known
from asd_policy.paradigms import sample_paradigms
from asd_policy.sampler_core import (  # noqa: F401 - SamplerStats and Model are part of this module's interface
    Generators, Model, SamplerStats, _chains, _check_cond, _denoise, _index_tensor, _infer_device, _per_chain,
    _rand, _randn, _take_rows,
)
from asd_policy.schedule import NoiseSchedule
from asd_policy.tree_sampler import sample_asd_tree

__all__ = ["NoiseSchedule", "Known", "SamplerStats", "sample", "sample_ddpm", "sample_ddim", "sample_asd", "sample_asd_tree",
           "sample_paradigms", "accept_or_reflect"]

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
) -> torch.Tensor:
    """Exact DDPM sampling with autospeculative decoding (Hu et al. 2025); design note section 3.
    (Several drafts per step: method "asd_tree", asd_policy/tree_sampler.py.)

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
        verify_rows = tuple(_index_tensor(list(r), device) for r in zip(*rows)) if rows else ()
        n = len(active_list)
        chains = _chains(generator, active_list)  # per-chain streams: z then u, as with B = 1
        z = _randn((n, L, *x.shape[1:]), chains, x)
        u = _rand((n, L), chains, x)
        x_a, t_a, m_a, value, finished, accepted, checked = asd_round(
            denoise, schedule, x[active], t[active], m_anchor[active], _take_rows(cond, active), z, u, anchor, verify_rows,
            known.rows(active) if known is not None else None,
        )
        x[active], t[active], m_anchor[active] = x_a, t_a, m_a
        out[active] = torch.where(finished.reshape(n, *([1] * (x.dim() - 1))), value, out[active])
        rounds[active] += 1
        accepted_drafts[active] += accepted
        checked_drafts[active] += checked
        t_host = t.tolist()  # the round's one host synchronisation

    stats.rounds += rounds.cpu()
    stats.accepted_drafts += accepted_drafts.cpu()
    stats.checked_drafts += checked_drafts.cpu()
    stats.steps_total += T * x.shape[0]
    return out


def asd_round(
    denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    schedule: NoiseSchedule,
    x: torch.Tensor,
    t: torch.Tensor,
    m_anchor: torch.Tensor,
    cond: Any,
    z: torch.Tensor,
    u: torch.Tensor,
    anchor: str,
    verify_rows: tuple[torch.Tensor, ...] | None = None,
    known: KnownInputs | None = None,
) -> tuple[torch.Tensor, ...]:
    """One draft-verify-accept round for n chains at once; pure tensor code (no host sync), so a
    fixed-shape round can be captured in a CUDA graph.

    x [n, ...] states at steps t [n] (-1: finished; such chains are left as they are), m_anchor
    [n, ...] the reuse anchors, z [n, L, ...] draft noise, u [n, L] uniforms for the accept test.
    denoise(x_rows, t_rows, cond_rows) -> x0hat rows. verify_rows: (chain, j) index tensors of the
    rows to evaluate (empty tuple: none), or None to evaluate every row j >= (1 if fresh else 0).
    known: the known inputs of these n chains (inpainting), or None.
    Returns (x, t, next anchor, x0 of chains that finished now, finished, accepted drafts, checked drafts).
    """
    n, L = u.shape
    device = x.device
    event = (1,) * (x.dim() - 1)  # broadcasts a per-row coefficient over one sample
    active = t >= 0
    if known is not None:
        x = known.fill(x, t)
    if anchor == "fresh":
        m_a = denoise(x, t.clamp_min(0), cond)
    else:
        m_a = m_anchor

    # 1. Draft: xhat_{j+1} = A xhat_j + B m_a + S z_j at step t - j (the anchor stands in for x0hat).
    steps = t[:, None] - torch.arange(L, device=device)  # [n, L]
    A, B, S = (tab[steps.clamp_min(0)].reshape(n, L, *event) for tab in (schedule.A, schedule.B, schedule.S))
    drafts = [x]
    for j in range(L):
        nxt = A[:, j] * drafts[j] + B[:, j] * m_a + S[:, j] * z[:, j]
        drafts.append(known.fill(nxt, t - j - 1) if known is not None else nxt)
    xhat = torch.stack(drafts, dim=1)  # [n, L+1, ...]; xhat[:, j] is the input of step t - j

    # 2. Verify: one batched call, m_j = x0hat(xhat_j, t - j), for the drafted rows.
    first_row = 1 if anchor == "fresh" else 0  # fresh: row 0 is the anchor call itself
    if verify_rows is None:
        chain = torch.arange(n, device=device).repeat_interleave(L - first_row)
        m_rows = denoise(xhat[:, first_row:L].flatten(0, 1), steps[:, first_row:].clamp_min(0).flatten(), _take_rows(cond, chain))
        m = torch.cat([m_a[:, None], m_rows.reshape(n, L - first_row, *x.shape[1:])], dim=1) if first_row else m_rows.reshape(xhat[:, :L].shape)
    else:
        m = m_a[:, None].expand(n, L, *x.shape[1:]).clone()
        if verify_rows:
            row_chain, row_j = verify_rows
            m[row_chain, row_j] = denoise(xhat[row_chain, row_j], steps[row_chain, row_j], _take_rows(cond, row_chain))

    # 3. Accept or reflect every noisy drafted step at once; a chain keeps its prefix up to the first rejection.
    mu_q = A * xhat[:, :L] + B * m_a[:, None]
    mu_p = A * xhat[:, :L] + B * m
    if known is not None:  # K's factors are equal under p and q: the test runs over F
        mu_q, mu_p = (pin_known(mu, xhat[:, 1:], known.mask[:, None]) for mu in (mu_q, mu_p))
    noisy = steps >= 1  # the readout at t = 0 is deterministic and never speculated
    sigma = torch.where(noisy, S.reshape(n, L), torch.ones_like(S.reshape(n, L)))
    fixed, accepted = accept_or_reflect(xhat[:, 1:].flatten(0, 1), mu_q.flatten(0, 1), mu_p.flatten(0, 1), sigma.flatten(), u.flatten())
    fixed, accepted = fixed.reshape(xhat[:, 1:].shape), accepted.reshape(n, L)
    rejected = noisy & ~accepted
    any_rejected = rejected.any(dim=1)
    num_noisy = noisy.sum(dim=1)
    first_rejected = torch.where(any_rejected, rejected.long().argmax(dim=1), num_noisy)  # = drafts accepted
    steps_taken = first_rejected + any_rejected.long()  # the reflected step is taken too

    chain = torch.arange(n, device=device)
    # New state: the reflected draft at the first rejection, else the last accepted draft.
    x_new = torch.where((steps_taken > 0).reshape(n, *event), fixed[chain, (steps_taken - 1).clamp_min(0)], x)
    # A chain finishes when it accepted every noisy step and its readout row (t = 0) was verified.
    finished = active & ~any_rejected & (t < L)
    value = m[chain, t.clamp(0, L - 1)]
    # Reuse: the model output at the last accepted input anchors the next round (one step stale).
    m_next = m[chain, torch.where(any_rejected, first_rejected, (num_noisy - 1).clamp_min(0))]
    t_new = torch.where(finished, torch.full_like(t, -1), torch.where(active, t - steps_taken, t))
    return x_new, t_new, m_next, value, finished, first_rejected, steps_taken


def _check_asd_arguments(speculation_length: int, anchor: str) -> int:
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r} is unknown; use one of {ANCHORS}")
    if not isinstance(speculation_length, int) or isinstance(speculation_length, bool) or speculation_length < 1:
        raise ValueError(f"speculation_length must be an int >= 1, got {speculation_length!r}")
    return speculation_length


# ---- entry point ----------------------------------------------------------------------------


def sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    method: str = "asd",
    cond: Any = None,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    noise: torch.Tensor | None = None,
    known: Known | None = None,
    **method_kwargs: Any,
) -> tuple[torch.Tensor, SamplerStats]:
    """Draw a batch of samples of `shape` = (B, H, D) from the model's reverse diffusion.

    method: "ddpm" (T sequential calls), "ddim" (num_inference_steps=10, eta=0.0) or
    "asd" (speculation_length=16, anchor="reuse"; exactly DDPM's distribution), "asd_tree" (ASD
    with a tree of drafts per round: row_budget=64, tree="best"; exact too), or
    "paradigms" (window=16, tolerance=0.1; approximate parallel Picard baseline).
    cond: conditioning with one row per batch element (Tensor or mapping of Tensors), or None.
    generator: one torch.Generator for the batch, or a sequence of B, one per chain (design note
    section 7): then chain b's sample depends only on generator[b], never on the other chains in
    its batch, and B = 1 draws in the same order as one shared generator.
    noise: the starting x_{T-1} (default: drawn from `generator`).
    known: coordinates held fixed (inpainting, design note section 6): the samples equal
    known.values where known.mask is True and are DDPM's conditional chain elsewhere.
    Returns (samples, stats).
    """
    if method not in SAMPLERS:
        raise ValueError(f"method={method!r} is unknown; use one of {METHODS}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be (B, ...) of positive ints, e.g. (B, horizon, action_dim); got {shape}")
    if isinstance(generator, Sequence):
        _per_chain(generator, shape[0])
    if device is None:
        device = _infer_device(model, cond)
    if noise is None:
        noise = _randn(shape, generator, torch.empty(0, device=device, dtype=dtype))
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected shape={shape}")
    x = noise.to(device=device, dtype=dtype)
    _check_cond(cond, shape[0])
    schedule = schedule.to(device, dtype)
    kin = None
    if known is not None:
        known.check(shape)
        if schedule.strided:  # inpaint.known_inputs draws num_train_timesteps steps of known inputs
            raise ValueError(f"known coordinates (inpainting) are not supported yet on a strided DDPM schedule "
                             f"(num_inference_steps={schedule.num_inference_steps}); sample without known_actions, "
                             f"or with the full schedule (num_inference_steps=None)")
        known = Known(known.mask.to(device), known.values.to(device, dtype), known.noised)
        kin = known_inputs(known, schedule, lambda s: _randn(s, generator, x))

    stats = SamplerStats(method, shape[0])
    start = time.perf_counter()
    x = SAMPLERS[method](model, schedule, x, cond=cond, generator=generator, stats=stats, known=kin, **method_kwargs)
    x = kin.readout(x) if kin is not None else x
    if stats._finite is not None and not bool(stats._finite):
        raise ValueError("model returned NaN or inf during sampling; check the model's weights, inputs and cond")
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    stats.wall_time_s = time.perf_counter() - start
    return x, stats


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "asd": sample_asd, "asd_tree": sample_asd_tree, "paradigms": sample_paradigms}
METHODS = tuple(SAMPLERS)
ASD_METHODS = ("asd", "asd_tree")  # exact speculative samplers: what the exactness check tests
