"""Evaluation: every sampler on the same seeded episodes -> success versus latency.

``evaluate(EvalConfig(...))`` (or ``evaluate(**fields)``) returns a plain dict, also written to
``<out_dir>/results.json``::

    {"task", "checkpoint", "device",
     "samplers": {name: {"episodes", "success_rate", "success_ci95": [lo, hi],
                         "chunk_latency_ms": {"mean", "p50", "p95", "p99"},
                         "sequential_calls_mean", "nfe_mean", "speedup_vs_ddpm",
                         "action_latency_ms", "errors", "sampler" (the settings that ran),
                         "outcomes", "realtime" in real-time mode, "fidelity" with fidelity=true}},
     "episodes": [per-episode rows], "seed", "episodes_requested", "complete", ...}

Modules: ``config`` (EvalConfig), ``runner`` (the loop), ``inputs`` (policy and envs), ``store``
(episodes.jsonl, resume, run meta), ``fidelity`` (fidelity=true: chunks vs DDPM-100 on
observations the episodes visited), ``summary`` (rows, Wilson interval, per-sampler summary),
``tables`` (the text and markdown tables), ``plot`` (PNG, GIFs), ``wandb_log`` (the W&B run).
Sampler presets live in :mod:`asd_policy.sampling.presets`.
"""
from asd_policy.evaluation.config import EvalConfig, EvalError
from asd_policy.evaluation.inputs import load_checked_policy
from asd_policy.evaluation.plot import PLOT_NAME, plot_success_vs_latency
from asd_policy.evaluation.runner import evaluate
from asd_policy.evaluation.store import EPISODES_NAME, META_NAME, RESULTS_NAME
from asd_policy.evaluation.summary import summarize, wilson_interval
from asd_policy.evaluation.tables import format_table, markdown_table

__all__ = [
    "EvalConfig",
    "EvalError",
    "evaluate",
    "load_checked_policy",
    "summarize",
    "wilson_interval",
    "format_table",
    "markdown_table",
    "plot_success_vs_latency",
    "RESULTS_NAME",
    "EPISODES_NAME",
    "META_NAME",
    "PLOT_NAME",
]
