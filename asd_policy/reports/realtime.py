"""The real-time results page: success against control rate, and chunk-boundary jumps against delay.

    python scripts/report_realtime.py docs/results/realtime --out docs/results-realtime.md --notes notes.md

Reads every real-time evaluation run (``results.json`` + ``run_meta.json``, written by
``scripts/eval.py realtime=sim ...``) under the given folders, groups them by task and latency
source (measured on the machine, or a fixed latency model), and writes one table and two plots per
group: success rate (Wilson 95% interval) against control rate with one line per sampler and
transition, and the mean action jump at chunk boundaries against the mean delay in ticks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from asd_policy.evaluation.tables import fmt

__all__ = ["load_runs", "group_runs", "realtime_rows", "realtime_markdown", "glance_markdown", "plot_success_vs_rate",
           "plot_jump_vs_delay", "write_realtime_report"]

Run = Mapping[str, Any]  # {"dir", "results", "meta", "control_hz", "transition", "latency"}

COLUMNS = ["rate Hz", "transition", "sampler", "episodes", "success (95% CI)", "chunk ms", "delay ticks",
           "misses / tick", "skipped", "stale", "boundary jump", "within-chunk jump", "load"]


def load_runs(roots: Iterable[str | os.PathLike]) -> list[dict]:
    """Every real-time run (a folder with results.json and run_meta.json) under ``roots``."""
    runs = []
    for root in roots:
        for res in sorted(Path(root).rglob("results.json")):
            meta_path = res.parent / "run_meta.json"
            if not meta_path.exists():
                continue
            results, meta = json.loads(res.read_text()), json.loads(meta_path.read_text())
            if meta.get("realtime") in (None, False, "false"):
                continue
            latency = next(iter((meta.get("latency") or {}).values()), {}).get("latency_source", "measured")
            runs.append({"dir": res.parent, "results": results, "meta": meta, "control_hz": float(meta["control_hz"]),
                         "transition": transition_label(meta), "latency": latency})
    return runs


def transition_label(meta: Mapping[str, Any]) -> str:
    """The transition, with ``+extend`` when the run executed predictions past the chunk on a miss."""
    label = meta.get("transition", "switch")
    return label + "+extend" if meta.get("on_miss") == "extend" else label


def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (task, latency source), each group sorted by control rate then transition."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run["results"]["task"], run["latency"]), []).append(run)
    order = {"switch": 0, "switch+extend": 1, "ensemble": 2, "inpaint": 3, "inpaint+extend": 4}
    return {k: sorted(v, key=lambda r: (r["control_hz"], order.get(r["transition"], 9))) for k, v in sorted(groups.items())}


def realtime_rows(runs: Sequence[Run]) -> list[list[str]]:
    """One row per (run, sampler): the cells of :data:`COLUMNS`."""
    rows = []
    for run in runs:
        for name, s in run["results"]["samplers"].items():
            rt = s.get("realtime") or {}
            lo, hi = s["success_ci95"]
            lat = rt.get("latency_model_ms") or s["chunk_latency_ms"]["mean"]
            rows.append([f"{run['control_hz']:g}", run["transition"], name, str(s["episodes"]),
                         f"{fmt(s['success_rate'], '.2f')} [{lo:.2f}, {hi:.2f}]", fmt(lat), fmt(rt.get("delay_ticks_mean"), ".2f"),
                         fmt(rt.get("deadline_miss_rate"), ".3f"), str(rt.get("skipped_actions", "-")),
                         str(rt.get("stale_chunks", "-")), fmt(rt.get("boundary_jump_mean"), ".3f"),
                         fmt(rt.get("within_chunk_jump_mean"), ".3f"), _load(rt)])
    return rows


def _load(rt: Mapping[str, Any]) -> str:
    """The machine's 1-minute load average when a measured-latency run started ('-' for a latency model)."""
    load = (rt.get("load_avg_1min") or {}).get("start")
    return "-" if load is None else f"{load:.1f}"


def realtime_markdown(runs: Sequence[Run]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in realtime_rows(runs)])


def _series(runs: Sequence[Run]) -> dict[tuple[str, str], list[tuple[Run, Mapping[str, Any]]]]:
    out: dict[tuple[str, str], list] = {}
    for run in runs:
        for name, s in run["results"]["samplers"].items():
            out.setdefault((name, run["transition"]), []).append((run, s))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


MARKERS = {"switch": "o", "ensemble": "s", "inpaint": "^", "switch+extend": "D", "inpaint+extend": "v"}
STYLES = {"switch": "-", "ensemble": ":", "inpaint": "--", "switch+extend": "-.", "inpaint+extend": (0, (1, 1))}


def plot_success_vs_rate(runs: Sequence[Run], path: str | os.PathLike, title: str) -> Path:
    """Success (Wilson bars) against control rate (log2 axis), one line per sampler and transition."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colors: dict[str, Any] = {}
    for (name, transition), points in _series(runs).items():
        points = sorted(points, key=lambda p: p[0]["control_hz"])
        x = [p[0]["control_hz"] for p in points]
        y = [p[1]["success_rate"] for p in points]
        err = [[max(v - p[1]["success_ci95"][0], 0) for v, p in zip(y, points)],
               [max(p[1]["success_ci95"][1] - v, 0) for v, p in zip(y, points)]]
        color = colors.setdefault(name, f"C{len(colors)}")
        ax.errorbar(x, y, yerr=err, color=color, linestyle=STYLES.get(transition, "-"),
                    marker=MARKERS.get(transition, "o"), capsize=3, label=f"{name}, {transition}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["control_hz"] for r in runs}))
    ax.get_xaxis().set_major_formatter(_plain_ticks())
    ax.set_xlabel("control rate, Hz (log scale)")
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_jump_vs_delay(runs: Sequence[Run], path: str | os.PathLike, title: str) -> Path:
    """Mean boundary jump against mean delay (ticks), one point per run and sampler."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colors: dict[str, Any] = {}
    for (name, transition), points in _series(runs).items():
        rts = [s.get("realtime") or {} for _, s in points]
        xy = [(rt.get("delay_ticks_mean"), rt.get("boundary_jump_mean")) for rt in rts]
        xy = [(x, y) for x, y in xy if x is not None and y is not None]
        if xy:
            color = colors.setdefault(name, f"C{len(colors)}")
            ax.scatter(*zip(*xy), color=color, marker=MARKERS.get(transition, "o"), label=f"{name}, {transition}")
    ax.set_xlabel("mean delay of a chunk, control ticks")
    ax.set_ylabel("mean |a_t - a_(t-1)| at chunk switches (normalised)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _plain_ticks():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def glance_markdown(runs: Sequence[Run]) -> str:
    """One row per (task, latency, sampler, transition): its successes at every rate run, from the
    largest run of each point; the table that shows a sweep at a glance."""
    best: dict[tuple, dict[float, Mapping[str, Any]]] = {}
    for run in runs:
        for name, s in run["results"]["samplers"].items():
            key = (run["results"]["task"], run["latency"], name, run["transition"])
            old = best.setdefault(key, {}).get(run["control_hz"])
            if old is None or s["episodes"] > old["episodes"]:
                best[key][run["control_hz"]] = s
    order = {"ddpm": 0, "asd": 1, "ddim": 2}
    lines = ["| task | latency | sampler | transition | success at each control rate |", "|---|---|---|---|---|"]
    for (task, source, name, transition), points in sorted(
            best.items(), key=lambda kv: (kv[0][0], kv[0][1] != "measured", kv[0][1], kv[0][3], order.get(kv[0][2], 9), kv[0][2])):
        cells = " · ".join(f"{hz:g} Hz **{round(s['success_rate'] * s['episodes'])}/{s['episodes']}**"
                           for hz, s in sorted(points.items()))
        latency = _short_latency(source)
        lines.append(f"| {task} | {latency} | {name} | {transition} | {cells} |")
    return "\n".join(lines)


def _model_stem(source: str) -> str:
    """The file stem of a latency source (``latency-profile-cpu-lift`` for
    ``latency_profile:docs/bench/latency-profile-cpu-lift.json``; ``latency_ms`` for a map)."""
    return Path(source.split(":", 1)[-1]).stem


def _short_latency(source: str) -> str:
    """``measured``, or the latency model's short name (``cpu-lift`` for latency-profile-cpu-lift.json)."""
    return "measured" if source == "measured" else _model_stem(source).replace("latency-profile-", "")


def _latency_label(source: str) -> str:
    if source == "measured":
        return "latency measured on this machine"
    return f"fixed latency model ({source.replace('latency_profile:', 'profile ')})"


def write_realtime_report(roots: Sequence[str | os.PathLike], out: str | os.PathLike, title: str,
                          notes: str | None = None, intro: str | None = None) -> Path:
    """The page: ``intro``, then per (task, latency source) the commands, the table and the two plots
    (PNGs beside the runs), then ``notes``."""
    out = Path(out)
    groups = group_runs(load_runs(roots))
    parts = [f"# {title}", ""] + ([intro.strip(), ""] if intro else [])
    parts += ["## Every point at a glance", "",
              "Successes per control rate, from the tables below (the largest run where a point ran twice); "
              "`latency` names the fixed latency model (a profile in docs/bench) or says the latency was measured.",
              "", glance_markdown([r for rs in groups.values() for r in rs]), ""]
    for (task, source), runs in groups.items():
        label = _latency_label(source)
        folder = Path(os.path.commonpath([str(r["dir"]) for r in runs]))
        slug = "measured" if source == "measured" else f"model_{_model_stem(source)}"
        short = "latency measured" if source == "measured" else f"latency model {_short_latency(source)}"
        rate_png = plot_success_vs_rate(runs, folder / f"success_vs_rate_{slug}.png", f"{task}: success vs control rate, {short}")
        jump_png = plot_jump_vs_delay(runs, folder / f"jump_vs_delay_{slug}.png", f"{task}: chunk-boundary jump vs delay, {short}")
        parts += [f"## {task}: {label}", "", "```bash"]
        parts += sorted({r["results"].get("command", "") for r in runs if r["results"].get("command")})
        machine = runs[0]["results"].get("device_name", "?")
        parts += ["```", "", f"Device {machine}, torch {runs[0]['results'].get('torch', '?')}, env seeds from "
                  f"{runs[0]['results'].get('seed')}, the same for every sampler and rate.", "",
                  realtime_markdown(runs), "",
                  f"![success vs control rate]({os.path.relpath(rate_png, out.parent)})",
                  f"![boundary jump vs delay]({os.path.relpath(jump_png, out.parent)})", ""]
    if notes:
        parts += [notes.strip(), ""]
    out.write_text("\n".join(parts))
    return out
