"""Two-sample statistics for sampler tests: energy distance with a permutation p-value."""

from __future__ import annotations

import torch


def energy_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 400, seed: int = 0) -> tuple[float, float]:
    """(energy distance, permutation p-value) for H0: rows of x and y come from one distribution.

    Székely & Rizzo's statistic 2 E|X-Y| - E|X-X'| - E|Y-Y'| on the pooled distance matrix; the
    p-value counts label permutations at least as extreme (with the +1 correction, so p > 0).
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    n, m = x.shape[0], y.shape[0]
    dist = torch.cdist(torch.cat([x, y]), torch.cat([x, y]))

    def statistic(labels: torch.Tensor) -> torch.Tensor:
        a = labels.double()
        b = 1 - a
        dxy = a @ dist @ b / (n * m)
        dxx = a @ dist @ a / (n * n)
        dyy = b @ dist @ b / (m * m)
        return 2 * dxy - dxx - dyy

    observed_labels = torch.cat([torch.ones(n), torch.zeros(m)])
    observed = statistic(observed_labels)
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([observed_labels[torch.randperm(n + m, generator=g)] for _ in range(permutations)])
    a = perms.double()
    b = 1 - a
    null = 2 * ((a @ dist) * b).sum(1) / (n * m) - ((a @ dist) * a).sum(1) / n**2 - ((b @ dist) * b).sum(1) / m**2
    p_value = (1 + int((null >= observed).sum())) / (permutations + 1)
    return float(observed), p_value
