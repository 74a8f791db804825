"""Pictures of a run: the success-versus-latency PNG and episode GIFs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from asd_policy.evaluation.tables import fmt

__all__ = ["PLOT_NAME", "plot_success_vs_latency", "write_gif"]

PLOT_NAME = "success_vs_latency.png"


def plot_success_vs_latency(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """PNG: success rate (Wilson 95% error bars) against mean chunk latency (p50-p95 bars)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, s in results["samplers"].items():
        lat = s["chunk_latency_ms"]
        if lat["mean"] is None or s["success_rate"] is None:
            continue
        lo, hi = s["success_ci95"]
        y = s["success_rate"]
        xerr = [[max(lat["mean"] - lat["p50"], 0.0)], [max(lat["p95"] - lat["mean"], 0.0)]]
        yerr = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]
        ax.errorbar(lat["mean"], y, yerr=yerr, xerr=xerr, fmt="o", capsize=4,
                    label=f"{name}: {fmt(s['sequential_calls_mean'])} seq. calls, "
                          f"{lat['mean']:.0f} ms" if lat["mean"] >= 10 else
                          f"{name}: {fmt(s['sequential_calls_mean'])} seq. calls, {lat['mean']:.3g} ms")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15)
    ax.set_xlabel("chunk inference latency, ms (mean; bars p50-p95, log scale)")
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_ylim(-0.05, 1.05)
    n = max((s["episodes"] for s in results["samplers"].values()), default=0)
    ax.set_title(f"{results['task'] or 'policy'}: success vs latency ({n} episodes per sampler)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_gif(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path | None:
    from PIL import Image

    imgs = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    if not imgs:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / max(fps, 1)), loop=0)
    return path
