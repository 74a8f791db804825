"""Two-sample statistics for sampler tests: the library's energy-distance permutation test.

One implementation, in asd_policy.checks.twosample (the exactness check uses it too); re-exported here
so the sampler tests keep importing it from this module. :func:`pooled_energy_test` is the same test
on coordinates of very different spreads (a chunk's actions), each in units of its pooled spread.
"""

import torch

from asd_policy.checks.twosample import energy_test

__all__ = ["POOLED_SCALE_FLOOR", "energy_test", "pooled_energy_test"]

#: The smallest spread a coordinate is divided by: a coordinate that is constant in both samples (a
#: clipped action) stays at 0 instead of dividing by 0.
POOLED_SCALE_FLOOR = 1e-3


def pooled_energy_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 400, seed: int = 0) -> tuple[float, float]:
    """:func:`energy_test` with each coordinate divided by its standard deviation over the pooled rows of x and y.

    Why pooled: the permutation p-value is exact only when whatever the statistic depends on is the same
    for every relabelling of the pooled rows. The pooled spread is; one sample's spread is not: scaled by
    y's own spread, y is standardised and x is not, so on small samples, or clipped ones where a
    coordinate of y barely moves, the observed split stands out from its relabellings under H0 (with 10
    rows each and 64 clipped coordinates it rejects 99% of true nulls at alpha 0.05, see
    tests/test_lerobot_conformance.py).
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    scale = torch.cat([x, y]).std(dim=0).clamp_min(POOLED_SCALE_FLOOR)
    return energy_test(x / scale, y / scale, permutations=permutations, seed=seed)
