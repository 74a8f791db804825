"""Action samplers: sequential DDPM, DDIM, and exact autospeculative decoding (ASD).

The math is in ../shared/design/asd-sampler.md; the names here follow it. Every sampler is a
short function of (model, schedule, x, ...) with no hidden state, and all share one model
interface:

    model(x_t: Tensor[N, H, D], t: LongTensor[N], cond: rows aligned with x_t, or None) -> prediction

where the prediction is of the schedule's ``prediction_type``. ``sample`` is the entry point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from asd_policy.schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "SamplerStats", "sample", "sample_ddpm", "sample_ddim", "sample_asd", "accept_or_reflect"]

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
METHODS = ("ddpm", "ddim", "asd")
ANCHORS = ("reuse", "fresh")


@dataclass
class SamplerStats:
    """Cost accounting for one call of a sampler (one action chunk per batch element).

    Per-element tensors (on the CPU, one entry per batch element) say how each chain progressed;
    for ASD a round is one draft-verify-accept cycle.
    """

    method: str
    batch_size: int
    sequential_calls: int = 0  # model invocations made one after another
    nfe: int = 0  # rows evaluated by the model in total (single-sample network evaluations)
    wall_time_s: float = 0.0
    rounds: torch.Tensor = field(default=None)  # [B] sequential rounds each chain took
    accepted_drafts: torch.Tensor = field(default=None)  # [B] drafted steps accepted as drawn
    checked_drafts: torch.Tensor = field(default=None)  # [B] drafted steps that reached the accept test
    _finite: torch.Tensor | None = field(default=None, repr=False)  # device flag: every model output finite

    def __post_init__(self) -> None:
        for name in ("rounds", "accepted_drafts", "checked_drafts"):
            if getattr(self, name) is None:
                setattr(self, name, torch.zeros(self.batch_size, dtype=torch.long))

    @property
    def acceptance_rate(self) -> float:
        """Fraction of checked drafts accepted (nan for samplers that do not draft)."""
        checked = int(self.checked_drafts.sum())
        return int(self.accepted_drafts.sum()) / checked if checked else float("nan")

    @property
    def steps_per_round(self) -> float:
        """Mean number of diffusion steps a chain advanced per sequential round."""
        rounds = int(self.rounds.sum())
        return self.steps_total / rounds if rounds else float("nan")

    steps_total: int = 0  # diffusion steps taken, summed over chains

    def as_dict(self) -> dict:
        """Plain numbers, for loggers and results files."""
        return {
            "method": self.method,
            "batch_size": self.batch_size,
            "sequential_calls": self.sequential_calls,
            "nfe": self.nfe,
            "wall_time_s": self.wall_time_s,
            "rounds_mean": float(self.rounds.float().mean()),
            "steps_per_round": self.steps_per_round,
            "acceptance_rate": self.acceptance_rate,
        }


# ---- shared pieces --------------------------------------------------------------------------


def _take_rows(cond: Any, index: torch.Tensor) -> Any:
    """The conditioning rows for `index` (a Tensor, a mapping of Tensors, or None)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[index]
    if isinstance(cond, Mapping):
        return {k: _take_rows(v, index) for k, v in cond.items()}
    raise TypeError(f"cond must be a Tensor, a mapping of Tensors, or None; got {type(cond).__name__}")


def _denoise(
    model: Model, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, cond: Any, stats: SamplerStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """One model invocation on the rows of x: returns (x0hat, epsilon-hat) and books its cost."""
    out = model(x, t, cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model returned {got} for an input of shape {tuple(x.shape)}; it must return the input's shape")
    stats.sequential_calls += 1
    stats.nfe += x.shape[0]
    # Checked once at the end: a per-call check would cost a host synchronisation per call.
    finite = torch.isfinite(out).all()
    stats._finite = finite if stats._finite is None else stats._finite & finite
    return schedule.predict_x0_eps(out.to(x.dtype), x, t)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise from `generator` (on whatever device it lives), delivered on like's device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


# ---- sequential DDPM ------------------------------------------------------------------------


def sample_ddpm(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: torch.Generator | None = None,
    stats: SamplerStats | None = None,
) -> torch.Tensor:
    """Ancestral DDPM from x = x_{T-1}: T sequential model calls."""
    stats = stats or SamplerStats("ddpm", x.shape[0])
    for step in reversed(range(schedule.num_train_timesteps)):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        x0hat, _ = _denoise(model, schedule, x, t, cond, stats)
        A, B, S = schedule.coefficients(t, x)
        x = A * x + B * x0hat
        if step > 0:
            x = x + S * _randn(x.shape, generator, x)
    stats.rounds += schedule.num_train_timesteps
    stats.steps_total += schedule.num_train_timesteps * x.shape[0]
    return x


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
    generator: torch.Generator | None = None,
    num_inference_steps: int = 10,
    eta: float = 0.0,
    stats: SamplerStats | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) over N of the T training steps; eta = 0 is deterministic.

    Matches diffusers' DDIMScheduler with its defaults (leading spacing, set_alpha_to_one=True,
    use_clipped_model_output=False). An approximation of DDPM, kept as the baseline users reach for.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    stats = stats or SamplerStats("ddim", x.shape[0])
    steps = ddim_timesteps(schedule.num_train_timesteps, num_inference_steps)
    ratio = schedule.num_train_timesteps // num_inference_steps
    abar = schedule.alphas_cumprod
    for step in steps:
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        x0hat, eps = _denoise(model, schedule, x, t, cond, stats)
        a_t = abar[step]
        a_prev = abar[step - ratio] if step - ratio >= 0 else torch.ones((), dtype=abar.dtype, device=abar.device)
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0hat + (1 - a_prev - std**2).sqrt() * eps
        if eta > 0:
            x = x + std * _randn(x.shape, generator, x)
    stats.rounds += len(steps)
    stats.steps_total += len(steps) * x.shape[0]
    return x


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
    generator: torch.Generator | None = None,
    speculation_length: int = 16,
    anchor: str = "reuse",
    stats: SamplerStats | None = None,
) -> torch.Tensor:
    """Exact DDPM sampling with autospeculative decoding (Hu et al. 2025); design note section 3.

    Each round, for every unfinished chain at step t with anchor m_a:
      1. draft L steps with the anchor as the model output (no model call);
      2. verify: one batched model call on the L drafted inputs of every chain;
      3. accept drafts in order while p/q allows; reflect the first rejected one and stop there.
    anchor="fresh": m_a = x0hat(x, t) from a sequential call at the round's start (as published).
    anchor="reuse": m_a = the previous round's model output at its last accepted input (one call
    per round). The first reuse round drafts with m_a = 0: any anchor fixed before the round's noise
    keeps the output exact, and at t = T-1 the step barely depends on x0hat (B_t ~ 0).
    Chains finish independently; finished chains cost nothing. One host synchronisation per round.
    """
    L = speculation_length
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r} is unknown; use one of {ANCHORS}")
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"speculation_length must be an int >= 1, got {L!r}")
    stats = stats or SamplerStats("asd", x.shape[0])
    device, T = x.device, schedule.num_train_timesteps
    A_tab, B_tab, S_tab = schedule.A, schedule.B, schedule.S
    event = (1,) * (x.dim() - 1)  # broadcasts a per-row coefficient over one sample

    t = torch.full((x.shape[0],), T - 1, dtype=torch.long, device=device)  # -1 once finished
    m_anchor = torch.zeros_like(x)
    out = torch.empty_like(x)
    t_host = [T - 1] * x.shape[0]
    rounds, accepted_drafts, checked_drafts = (torch.zeros(x.shape[0], dtype=torch.long, device=device) for _ in range(3))
    first_verified_row = 1 if anchor == "fresh" else 0  # in fresh mode row 0 is the anchor call itself

    while True:
        active_list = [b for b, tb in enumerate(t_host) if tb >= 0]
        if not active_list:
            break
        n = len(active_list)
        active = _index_tensor(active_list, device)
        # Rows j = 0..L-1 of chain b verify the transition from step t_b - j; only steps >= 0 exist.
        rows = [(i, j) for i, b in enumerate(active_list) for j in range(first_verified_row, min(L, t_host[b] + 1))]

        xa, ta = x[active], t[active]
        if anchor == "fresh":
            ma, _ = _denoise(model, schedule, xa, ta, _take_rows(cond, active), stats)
        else:
            ma = m_anchor[active]

        # 1. Draft: xhat_{j+1} = A xhat_j + B m_a + S z_j at step t - j (the anchor stands in for x0hat).
        steps = ta[:, None] - torch.arange(L, device=device)  # [n, L]
        A, B, S = (tab[steps.clamp_min(0)].reshape(n, L, *event) for tab in (A_tab, B_tab, S_tab))
        z = _randn((n, L, *x.shape[1:]), generator, x)
        drafts = [xa]
        for j in range(L):
            drafts.append(A[:, j] * drafts[j] + B[:, j] * ma + S[:, j] * z[:, j])
        xhat = torch.stack(drafts, dim=1)  # [n, L+1, ...]; xhat[:, j] is the input of step t - j

        # 2. Verify: one batched call, m_j = x0hat(xhat_j, t - j) for every drafted row of every chain.
        m = ma[:, None].expand(n, L, *x.shape[1:]).clone()
        if rows:
            row_chain = _index_tensor([i for i, _ in rows], device)
            row_j = _index_tensor([j for _, j in rows], device)
            m[row_chain, row_j], _ = _denoise(
                model, schedule, xhat[row_chain, row_j], steps[row_chain, row_j], _take_rows(cond, active[row_chain]), stats
            )

        # 3. Accept or reflect every noisy drafted step at once; a chain keeps its prefix up to the first rejection.
        mu_q = A * xhat[:, :L] + B * ma[:, None]
        mu_p = A * xhat[:, :L] + B * m
        noisy = steps >= 1  # the readout at t = 0 is deterministic and never speculated
        u = _rand((n, L), generator, x)
        sigma = torch.where(noisy, S.reshape(n, L), torch.ones_like(S.reshape(n, L)))
        fixed, accepted = accept_or_reflect(
            xhat[:, 1:].flatten(0, 1), mu_q.flatten(0, 1), mu_p.flatten(0, 1), sigma.flatten(), u.flatten()
        )
        fixed, accepted = fixed.reshape(xhat[:, 1:].shape), accepted.reshape(n, L)
        rejected = noisy & ~accepted
        any_rejected = rejected.any(dim=1)
        num_noisy = noisy.sum(dim=1)
        first_rejected = torch.where(any_rejected, rejected.long().argmax(dim=1), num_noisy)
        steps_taken = first_rejected + any_rejected.long()  # the reflected step is taken too

        chain = torch.arange(n, device=device)
        # New state: the reflected draft at the first rejection, else the last accepted draft.
        x_new = fixed[chain, (steps_taken - 1).clamp_min(0)]
        x_new = torch.where((steps_taken > 0).reshape(n, *event), x_new, xa)
        # A chain finishes when it accepted every noisy step and its readout row (t = 0) was verified.
        finished = ~any_rejected & (ta < L)
        out[active] = torch.where(finished.reshape(n, *event), m[chain, ta.clamp(0, L - 1)], out[active])
        # Reuse: the model output at the last accepted input anchors the next round (one step stale).
        m_anchor[active] = m[chain, torch.where(any_rejected, first_rejected, (num_noisy - 1).clamp_min(0))]
        x[active] = x_new
        t[active] = torch.where(finished, torch.full_like(ta, -1), ta - steps_taken)

        rounds[active] += 1
        accepted_drafts[active] += first_rejected
        checked_drafts[active] += steps_taken
        t_host = t.tolist()  # the round's one host synchronisation

    stats.rounds += rounds.cpu()
    stats.accepted_drafts += accepted_drafts.cpu()
    stats.checked_drafts += checked_drafts.cpu()
    stats.steps_total += T * x.shape[0]
    return out


def _index_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """A LongTensor of host-side indices on `device`, copied without blocking the host on a GPU."""
    index = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


# ---- entry point ----------------------------------------------------------------------------


def sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    method: str = "asd",
    cond: Any = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    noise: torch.Tensor | None = None,
    **method_kwargs: Any,
) -> tuple[torch.Tensor, SamplerStats]:
    """Draw a batch of samples of `shape` = (B, H, D) from the model's reverse diffusion.

    method: "ddpm" (T sequential calls), "ddim" (num_inference_steps=10, eta=0.0) or
    "asd" (speculation_length=16, anchor="reuse"; exactly DDPM's distribution).
    cond: conditioning with one row per batch element (Tensor or mapping of Tensors), or None.
    noise: the starting x_{T-1} (default: drawn from `generator`).
    Returns (samples, stats).
    """
    samplers = {"ddpm": sample_ddpm, "ddim": sample_ddim, "asd": sample_asd}
    if method not in samplers:
        raise ValueError(f"method={method!r} is unknown; use one of {tuple(samplers)}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be (B, ...) of positive ints, e.g. (B, horizon, action_dim); got {shape}")
    if device is None:
        device = _infer_device(model, cond)
    if noise is None:
        noise = _randn(shape, generator, torch.empty(0, device=device, dtype=dtype))
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected shape={shape}")
    x = noise.to(device=device, dtype=dtype)
    _check_cond(cond, shape[0])

    stats = SamplerStats(method, shape[0])
    start = time.perf_counter()
    x = samplers[method](model, schedule.to(device, dtype), x, cond=cond, generator=generator, stats=stats, **method_kwargs)
    if stats._finite is not None and not bool(stats._finite):
        raise ValueError("model returned NaN or inf during sampling; check the model's weights, inputs and cond")
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    stats.wall_time_s = time.perf_counter() - start
    return x, stats


def _infer_device(model: Model, cond: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    if isinstance(cond, torch.Tensor):
        return cond.device
    return torch.device("cpu")


def _check_cond(cond: Any, batch: int) -> None:
    if cond is None:
        return
    if isinstance(cond, torch.Tensor):
        if cond.dim() == 0 or cond.shape[0] != batch:
            raise ValueError(f"cond has shape {tuple(cond.shape)}; its first dimension must be the batch size {batch}")
        return
    if isinstance(cond, Mapping):
        for key, value in cond.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
                raise ValueError(f"cond[{key!r}] must be a Tensor with first dimension {batch} (the batch size)")
        return
    raise TypeError(f"cond must be a Tensor, a mapping of Tensors, or None; got {type(cond).__name__}")
