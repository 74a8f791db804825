"""Two-sample statistics for sampler tests: the library's energy-distance permutation test.

One implementation, in asd_policy.checks.twosample (the exactness check uses it too); re-exported here
so the sampler tests keep importing it from this module.
"""

from asd_policy.checks.twosample import energy_test

__all__ = ["energy_test"]
