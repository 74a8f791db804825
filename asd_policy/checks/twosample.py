"""Two-sample permutation tests: is sample x drawn from the same distribution as sample y?

Every test here is a permutation test: the statistic is computed for the observed split of the
pooled rows and for random relabellings; the p-value counts relabellings at least as extreme,
with the +1 correction (so p >= 1 / (permutations + 1) and the test is exact in finite samples
under H0: x and y are exchangeable). The statistics are vectorised over a matrix of labels
(one row per relabelling, 1 = "belongs to x"), so thousands of permutations cost a few matrix
products.

* :func:`energy_statistic`: Szekely & Rizzo's energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'|
  (consistent against every alternative);
* :func:`moments_statistic`: the largest standardised difference of a per-coordinate mean or
  log-variance (more power when two samplers differ by a small shift or spread in a few coordinates);
* :func:`proportion_statistic`: the difference of two proportions (e.g. mode weights).

:func:`energy_test` is the one entry point the sampler tests use (tests/stat_tests.py re-exports it).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "energy_test",
    "energy_statistic",
    "moments_statistic",
    "proportion_statistic",
    "random_labels",
    "permutation_pvalue",
]

#: statistic(pooled rows [n + m, ...], labels [k, n + m]) -> [k] values, larger = more different.
Statistic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def random_labels(n: int, m: int, permutations: int, generator: torch.Generator) -> torch.Tensor:
    """[permutations + 1, n + m] float labels; row 0 is the observed split (x first), the rest random."""
    observed = torch.cat([torch.ones(n), torch.zeros(m)])
    order = torch.rand(permutations, n + m, generator=generator).argsort(dim=1)[:, :n]
    perms = torch.zeros(permutations, n + m).scatter_(1, order, 1.0)
    return torch.cat([observed[None], perms])


def energy_statistic(dist: torch.Tensor, labels: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Energy distance for each label row, from the pooled distance matrix ``dist`` [n + m, n + m]."""
    labels = labels.to(dist.dtype)
    n = labels[0].sum()
    m = labels.shape[1] - n
    row_sums = dist.sum(1)
    total = row_sums.sum()
    out = []
    for a in labels.split(chunk):
        a_d_a = ((a @ dist) * a).sum(1)
        a_d_1 = a @ row_sums
        a_d_b = a_d_1 - a_d_a
        b_d_b = total - 2 * a_d_1 + a_d_a
        out.append(2 * a_d_b / (n * m) - a_d_a / n**2 - b_d_b / m**2)
    return torch.cat(out)


def moments_statistic(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max over coordinates of |mean difference| and |log-variance ratio|, each over its normal-theory
    standard error (per-coordinate scale from the pooled rows, which no relabelling changes)."""
    z = rows.double().flatten(1)
    a = labels.double()
    n = a[0].sum()
    m = a.shape[1] - n
    s1, s2 = a @ z, a @ z.square()
    t1, t2 = z.sum(0), z.square().sum(0)
    mean_x, mean_y = s1 / n, (t1 - s1) / m
    var_x = (s2 / n - mean_x.square()) * n / (n - 1)
    var_y = ((t2 - s2) / m - mean_y.square()) * m / (m - 1)
    pooled_sd = z.std(0).clamp_min(1e-12)
    mean_z = (mean_x - mean_y).abs() / (pooled_sd * (1 / n + 1 / m).sqrt())
    log_var_z = (var_x.clamp_min(1e-12).log() - var_y.clamp_min(1e-12).log()).abs() / (2 / (n - 1) + 2 / (m - 1)).sqrt()
    return torch.maximum(mean_z.amax(1), log_var_z.amax(1))


def proportion_statistic(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """|fraction of x's rows that are 1 - fraction of y's| for 0/1 rows [n + m]."""
    z = rows.double().reshape(-1)
    a = labels.double()
    n = a[0].sum()
    m = a.shape[1] - n
    hits = a @ z
    return (hits / n - (z.sum() - hits) / m).abs()


def permutation_pvalue(values: torch.Tensor) -> float:
    """p-value from statistic values whose row 0 is the observed split (see :func:`random_labels`)."""
    observed, null = values[0], values[1:]
    return (1 + int((null >= observed).sum())) / (null.numel() + 1)


def energy_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 400, seed: int = 0) -> tuple[float, float]:
    """(energy distance, permutation p-value) for H0: rows of x and y come from one distribution.

    The statistic 2 E|X-Y| - E|X-X'| - E|Y-Y'| on the pooled distance matrix (rows flattened);
    the p-value counts label permutations at least as extreme (with the +1 correction, so p > 0).
    Permutations are ``torch.randperm`` draws from ``seed``, one per permutation.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    n, m = x.shape[0], y.shape[0]
    pooled = torch.cat([x, y])
    dist = torch.cdist(pooled, pooled)
    observed = torch.cat([torch.ones(n), torch.zeros(m)])
    g = torch.Generator().manual_seed(seed)
    perms = [observed[torch.randperm(n + m, generator=g)] for _ in range(permutations)]
    values = energy_statistic(dist, torch.stack([observed, *perms]))
    return float(values[0]), permutation_pvalue(values)
