"""ParaDiGMS (Shih et al. 2023): parallel Picard iteration over a sliding window of DDPM steps.

An approximate baseline (exact only at tolerance 0), kept next to the exact samplers of
:mod:`asd_policy.sampling` so that users can compare them on one interface.
"""

from __future__ import annotations

from typing import Any

import torch

from asd_policy.sampling.base import (
    Generators,
    Model,
    SamplerStats,
    _denoise,
    _index_tensor,
    _randn,
    _take_rows,
)
from asd_policy.sampling.inpaint import KnownInputs
from asd_policy.sampling.schedule import NoiseSchedule

__all__ = ["sample_paradigms"]


def sample_paradigms(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    cond: Any = None,
    generator: Generators = None,
    window: int = 16,
    tolerance: float = 0.1,
    stats: SamplerStats | None = None,
    known: KnownInputs | None = None,
) -> torch.Tensor:
    """ParaDiGMS (Shih et al. 2023): Picard iteration of the DDPM chain over a sliding window.

    The noise of every step is drawn up front (in DDPM's order). Writing step k as
    x_{k+1} = x_k + delta_k(x_k), each iteration evaluates the model at the `window` positions
    after a chain's converged prefix in one batched call, replaces them by the Picard update
    x_{b+i+1} = x_b + sum_{j<=i} delta_{b+j}, and slides past every position whose change was
    within tolerance (mean squared change <= tolerance^2 * S_k^2). Approximate: tolerance = 0 would
    reproduce DDPM; report the tolerance with every number.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if known is not None:
        raise ValueError("paradigms does not take known coordinates (inpainting); use ddpm, ddim or asd")
    stats = stats or SamplerStats("paradigms", x.shape[0])
    T, n, device = schedule.num_steps, x.shape[0], x.device
    event = (1,) * (x.dim() - 1)
    steps = torch.arange(T - 1, -1, -1, device=device)  # position k applies the step from t = T-1-k
    z = torch.stack([_randn(x.shape, generator, x) if k < T - 1 else torch.zeros_like(x) for k in range(T)], dim=1)
    traj = x[:, None].repeat(1, T + 1, *event)  # traj[:, k] = current estimate of the state before position k
    A, B, S = (tab[steps] for tab in (schedule.A, schedule.B, schedule.S))
    threshold = tolerance**2 * torch.maximum(S, S[T - 2] if T > 1 else S.new_ones(())) ** 2  # S_0 = 0: borrow S_1
    begin = torch.zeros(n, dtype=torch.long, device=device)
    begin_host = [0] * n
    rounds = torch.zeros(n, dtype=torch.long, device=device)
    offsets = torch.arange(window, device=device)

    while active_list := [i for i, b in enumerate(begin_host) if b < T]:
        active = _index_tensor(active_list, device)
        pos = begin[active, None] + offsets  # [m, window]
        valid = pos < T
        pos_c = pos.clamp_max(T - 1)
        chain = active[:, None].expand_as(pos_c)
        x_k = traj[chain, pos_c]  # [m, window, ...]
        # Evaluate only positions that exist (windows shrink at the end); known on the host.
        rows = [(i, j) for i, b in enumerate(active_list) for j in range(min(window, T - begin_host[b]))]
        row_i, row_j = (_index_tensor(list(r), device) for r in zip(*rows))
        x0hat = torch.zeros_like(x_k)
        x0hat[row_i, row_j], _ = _denoise(
            model, schedule, x_k[row_i, row_j], steps[pos_c[row_i, row_j]], _take_rows(cond, active[row_i]), stats
        )
        shape = (*pos_c.shape, *event)
        delta = (A[pos_c].reshape(shape) - 1) * x_k + B[pos_c].reshape(shape) * x0hat + S[pos_c].reshape(shape) * z[chain, pos_c]
        delta = delta * valid.reshape(shape)
        updated = traj[active, begin[active]][:, None] + delta.cumsum(dim=1)  # estimates of positions pos + 1
        change = (updated - traj[chain, pos_c + 1]).square().flatten(2).mean(2)  # [m, window]
        traj[chain[valid], pos_c[valid] + 1] = updated[valid]
        # Slide past the converged prefix (the first window position is always exact).
        bad = valid & (change > threshold[pos_c])
        bad[:, 0] = False
        converged = torch.where(bad.any(1), bad.long().argmax(1), valid.sum(1))
        new_begin = (begin[active] + converged.clamp_min(1)).clamp_max(T)
        # Positions beyond the window start from the newest estimate.
        last = (pos_c[:, -1] + 1).clamp_max(T)
        later = torch.arange(T + 1, device=device)[None] > last[:, None]
        traj[active] = torch.where(later.reshape(len(active_list), T + 1, *event), traj[active, last][:, None], traj[active])
        begin[active] = new_begin
        rounds[active] += 1
        begin_host = begin.tolist()  # the iteration's one host synchronisation

    stats.rounds += rounds.cpu()
    stats.steps_total += T * n
    return traj[:, T]
