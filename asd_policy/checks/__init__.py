"""Checks that the samplers are what they claim: the exactness check on a trained checkpoint
(``exactness``: every sampler's chunks against DDPM-100's, permutation tests from ``twosample``),
its power study against planted bugs (``planted``), and the exact Gaussian-mixture denoiser the
analytic tests and benchmarks use (``analytic``). This file only re-exports."""
from asd_policy.checks.exactness import ExactnessConfig, check

__all__ = ["ExactnessConfig", "check"]
