"""Benchmarks: the cases and timing harness behind scripts/bench_*.py (``harness``) and the
post-processing of a GPU session (``gpu_session``). Numbers are recorded in docs/, not asserted."""
