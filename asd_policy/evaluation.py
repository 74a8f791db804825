"""Evaluation: every sampler on the same seeded episodes -> success vs latency report.

``evaluate(...)`` returns a plain dict (also written to ``<out_dir>/results.json``)::

    {"task", "checkpoint", "device",
     "samplers": {name: {"episodes", "success_rate", "success_ci95": [lo, hi],
                         "chunk_latency_ms": {"mean", "p50", "p95", "p99"},
                         "sequential_calls_mean", "nfe_mean", "speedup_vs_ddpm",
                         # extras: "action_latency_ms", "errors", "sampler" (its settings),
                         # and "realtime" (deadline misses, skipped actions, rate) in real-time mode
                         }},
     "episodes": [per-episode rows], "seed", "episodes_requested", "complete", ...}

Episode ``i`` of every sampler resets the env with ``seed + i``. Per-episode rows are appended to
``<out_dir>/episodes.jsonl`` (flushed and fsynced) as each episode finishes; ``resume=True``
reads that file back and runs only the episodes that are missing. An env that raises fails its
episode (the error is kept in the row) and the evaluation goes on.

Sampler presets (the names accepted in ``samplers=[...]``) live in :data:`SAMPLER_PRESETS`;
``presets={name: {...}}`` adds or overrides presets for one evaluation.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from asd_policy.devices import describe_device

from asd_policy.rollout import (
    EpisodeResult,
    SamplerSpec,
    latency_summary,
    policy_device,
    rollout_episodes,
)

__all__ = [
    "SAMPLER_PRESETS",
    "EvalError",
    "resolve_samplers",
    "wilson_interval",
    "load_checked_policy",
    "evaluate",
    "summarize",
    "format_table",
    "plot_success_vs_latency",
]

#: Named sampler settings for evaluation: the one place they are defined.
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "ddpm": {"method": "ddpm"},  # DDPM-100: the exact, sequential reference
    "ddim": {"method": "ddim", "num_inference_steps": 10, "eta": 0.0},  # DDIM-10: fast, approximate
    "asd": {"method": "asd", "speculation_length": 16, "anchor": "reuse"},  # exact, fewer calls
    "asd_fresh": {"method": "asd", "speculation_length": 16, "anchor": "fresh"},  # as published
    "asd8": {"method": "asd", "speculation_length": 8, "anchor": "reuse"},
    # ParaDiGMS (Picard iteration over a sliding window): approximate; report its tolerance with it.
    "paradigms": {"method": "paradigms", "window": 16, "tolerance": 0.1},
}

RESULTS_NAME = "results.json"
EPISODES_NAME = "episodes.jsonl"
META_NAME = "run_meta.json"
PLOT_NAME = "success_vs_latency.png"


class EvalError(ValueError):
    """A bad input to the evaluation; its message is one line meant for the user."""


# ---------------------------------------------------------------------------------- inputs
def resolve_samplers(
    samplers: Iterable[str] | Mapping[str, Mapping[str, Any]] | str,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SamplerSpec]:
    """Sampler names (or ``{name: settings}``) -> :class:`SamplerSpec` list, in order."""
    table = {k: dict(v) for k, v in SAMPLER_PRESETS.items()}
    for k, v in (presets or {}).items():
        table[str(k)] = {**table.get(str(k), {}), **dict(v)}
    if isinstance(samplers, str):
        samplers = [s.strip() for s in samplers.split(",") if s.strip()]
    if isinstance(samplers, Mapping):
        items = [(str(k), dict(v)) for k, v in samplers.items()]
    else:
        items = []
        for name in samplers:
            name = str(name)
            if name not in table:
                raise EvalError(
                    f"unknown sampler {name!r}; known samplers: {', '.join(sorted(table))} "
                    f"(add one with presets.{name}={{method: asd, speculation_length: 8}})"
                )
            items.append((name, table[name]))
    if not items:
        raise EvalError("no samplers given; e.g. samplers=[ddpm,asd,ddim]")
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalError(f"sampler(s) listed twice: {', '.join(dup)}")
    try:
        from asd_policy.sampling import METHODS as methods
    except ImportError:  # pragma: no cover
        methods = ("ddpm", "ddim", "asd", "paradigms")
    specs = []
    for name, cfg in items:
        cfg = dict(cfg)
        method = cfg.pop("method", None)
        if method not in methods:
            raise EvalError(f"sampler {name!r} has method {method!r}; use one of {', '.join(methods)}")
        specs.append(SamplerSpec(name=name, method=str(method), kwargs=cfg))
    return specs


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else min(max(0.0, centre - half), p)
    hi = 1.0 if successes == n else max(min(1.0, centre + half), p)
    return [lo, hi]


def _policy_task(policy: Any) -> str | None:
    cfg = getattr(policy, "config", None)
    for obj, name in ((cfg, "task_name"), (policy, "task_name"), (policy, "task")):
        val = getattr(obj, name, None) if obj is not None else None
        if isinstance(val, str):
            return val
    return None


def load_checked_policy(checkpoint: str | os.PathLike, task: str | None, device: str = "cpu",
                        obs_dim: int | None = None, action_dim: int | None = None) -> Any:
    """Load a checkpoint and check that it belongs to ``task``; one-line :class:`EvalError`s."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise EvalError(f"checkpoint not found: {path} (pass checkpoint=<dir with policy.json>)")
    try:
        from asd_policy.checkpoint import load_policy
    except ImportError as exc:  # pragma: no cover - the policy module is part of the package
        raise EvalError(f"cannot import asd_policy.checkpoint: {exc}") from None
    try:
        policy = load_policy(path, device=device, obs_dim=obs_dim, action_dim=action_dim,
                             task_name=task)
    except (ValueError, OSError, KeyError) as exc:
        raise EvalError(" ".join(str(exc).split())) from None
    trained = _policy_task(policy)
    if task is not None and trained is not None and trained != task:
        raise EvalError(
            f"checkpoint {path} was trained for task {trained!r}, not {task!r}; "
            f"use checkpoints/{task} or pass task={trained}"
        )
    return policy


def _check_dims(policy: Any, env: Any, task: str | None) -> None:
    obs_dim = getattr(policy, "obs_dim", None)
    act_dim = getattr(policy, "action_dim", None)
    o = env.observation_space.shape
    a = env.action_space.shape
    if obs_dim is not None and o and int(o[-1]) != int(obs_dim):
        raise EvalError(f"policy expects obs_dim={obs_dim} but task {task!r} has {o[-1]}")
    if act_dim is not None and a and int(a[-1]) != int(act_dim):
        raise EvalError(f"policy emits action_dim={act_dim} but task {task!r} has {a[-1]}")


# ---------------------------------------------------------------------------------- rows
def _row(sampler: str, episode: int, r: EpisodeResult, extra: Mapping[str, Any] | None = None) -> dict:
    row = {
        "sampler": sampler,
        "episode": int(episode),
        "seed": int(r.seed),
        "success": bool(r.success),
        "steps": int(r.steps),
        "return": float(r.episode_return),
        "chunks": len(r.chunk_latency_ms),
        "chunk_latency_ms": [round(x, 4) for x in r.chunk_latency_ms],
        "chunk_actions": list(r.chunk_actions),
        "sequential_calls": list(r.sequential_calls),
        "nfe": list(r.nfe),
        "error": r.error,
        "wall_s": round(float(r.wall_s), 4),
        "final_info": dict(r.final_info),
    }
    if extra:
        row.update(extra)
    return row


def _flat_row(row: Mapping[str, Any]) -> dict:
    """A per-episode row without the per-chunk lists (for results.json, tables, W&B)."""
    out = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
    for k, v in (row.get("final_info") or {}).items():
        if k not in ("is_success", "success"):
            out[f"info.{k}"] = v
    lat = row.get("chunk_latency_ms") or []
    out["chunk_latency_ms_mean"] = float(np.mean(lat)) if lat else None
    out["chunk_latency_ms_p95"] = float(np.percentile(lat, 95)) if lat else None
    seq, nfe = row.get("sequential_calls") or [], row.get("nfe") or []
    out["sequential_calls_mean"] = float(np.mean(seq)) if seq else None
    out["nfe_mean"] = float(np.mean(nfe)) if nfe else None
    return out


def _action_latencies(row: Mapping[str, Any]) -> list[float]:
    out: list[float] = []
    for lat, k in zip(row.get("chunk_latency_ms") or [], row.get("chunk_actions") or []):
        if k:
            out.extend([lat / k] * int(k))
    return out


def summarize(rows: Sequence[Mapping[str, Any]], specs: Sequence[SamplerSpec]) -> dict[str, dict]:
    """Per-sampler summary in the results.json schema."""
    out: dict[str, dict] = {}
    for spec in specs:
        rs = sorted((r for r in rows if r["sampler"] == spec.name), key=lambda r: r["episode"])
        n = len(rs)
        k = sum(1 for r in rs if r["success"])
        lats = [x for r in rs for x in r.get("chunk_latency_ms") or []]
        seq = [x for r in rs for x in r.get("sequential_calls") or []]
        nfe = [x for r in rs for x in r.get("nfe") or []]
        entry = {
            "episodes": n,
            "success_rate": (k / n) if n else None,
            "success_ci95": wilson_interval(k, n),
            "chunk_latency_ms": latency_summary(lats),
            "sequential_calls_mean": float(np.mean(seq)) if seq else None,
            "nfe_mean": float(np.mean(nfe)) if nfe else None,
            "speedup_vs_ddpm": None,
            "action_latency_ms": latency_summary([x for r in rs for x in _action_latencies(r)]),
            "errors": sum(1 for r in rs if r.get("error")),
            "sampler": spec.as_dict(),
            "outcomes": _outcomes(rs),
        }
        if any("deadline_misses" in r for r in rs):
            ticks = sum(r.get("ticks", 0) for r in rs)
            entry["realtime"] = {
                "deadline_misses": int(sum(r.get("deadline_misses", 0) for r in rs)),
                "deadline_miss_rate": (sum(r.get("deadline_misses", 0) for r in rs) / ticks) if ticks else None,
                "skipped_actions": int(sum(r.get("skipped_actions", 0) for r in rs)),
                "achieved_hz_mean": _mean([r.get("achieved_hz") for r in rs]),
                "idle_fraction_mean": _mean([r.get("idle_fraction") for r in rs]),
            }
        out[spec.name] = entry
    ref = next((s.name for s in specs if s.name == "ddpm"), None) or next(
        (s.name for s in specs if s.method == "ddpm"), None)
    ref_lat = out[ref]["chunk_latency_ms"]["mean"] if ref else None
    for entry in out.values():
        mean = entry["chunk_latency_ms"]["mean"]
        if ref_lat and mean:
            entry["speedup_vs_ddpm"] = ref_lat / mean
    return out


def _outcomes(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of each categorical (str/int) value of the final info of successful episodes, e.g.
    which side of the obstacle a multimodal task was solved on ({"passed_side": {"-1": 9, "1": 11}})."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if not r.get("success"):
            continue
        for k, v in (r.get("final_info") or {}).items():
            if k in ("is_success", "success") or isinstance(v, (bool, float)):
                continue
            out.setdefault(k, {}).setdefault(str(v), 0)
            out[k][str(v)] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items() if len(v) <= 10}


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------------------------- reports
def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: Mapping[str, Any]) -> str:
    """The per-sampler summary as a fixed-width text table."""
    head = ["sampler", "episodes", "success", "95% CI", "chunk ms mean", "p50", "p95", "p99",
            "ms/action", "seq calls", "NFE", "speedup"]
    lines = []
    for name, s in results["samplers"].items():
        lat = s["chunk_latency_ms"]
        lo, hi = s["success_ci95"]
        lines.append([
            name, str(s["episodes"]), _fmt(s["success_rate"], ".2f"), f"[{lo:.2f}, {hi:.2f}]",
            _fmt(lat["mean"]), _fmt(lat["p50"]), _fmt(lat["p95"]), _fmt(lat["p99"]),
            _fmt((s.get("action_latency_ms") or {}).get("mean")),
            _fmt(s["sequential_calls_mean"]), _fmt(s["nfe_mean"], ".0f"),
            "-" if s["speedup_vs_ddpm"] is None else f"{s['speedup_vs_ddpm']:.2f}x",
        ])
        rt = s.get("realtime")
        if rt:
            lines[-1].append(f"misses {rt['deadline_misses']} skipped {rt['skipped_actions']} "
                             f"rate {_fmt(rt['achieved_hz_mean'])} Hz")
    if any(s.get("realtime") for s in results["samplers"].values()):
        head.append("real-time")
    if any(s.get("outcomes") for s in results["samplers"].values()):
        head.append("successes by outcome")
        for line, s in zip(lines, results["samplers"].values()):
            line.append("; ".join(f"{k} " + " ".join(f"{v}:{n}" for v, n in c.items())
                                  for k, c in (s.get("outcomes") or {}).items()) or "-")
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt_line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
    title = f"task={results['task']}  checkpoint={results['checkpoint']}  device={results['device']}"
    return "\n".join([title, fmt_line(head), fmt_line(["-" * w for w in widths])]
                     + [fmt_line(l) for l in lines])


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
                    label=f"{name}: {_fmt(s['sequential_calls_mean'])} seq. calls, "
                          f"{lat['mean']:.0f} ms" if lat["mean"] >= 10 else
                          f"{name}: {_fmt(s['sequential_calls_mean'])} seq. calls, {lat['mean']:.3g} ms")
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


def _write_gif(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with matplotlib
        return None
    imgs = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    if not imgs:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / max(fps, 1)), loop=0)
    return path


# ---------------------------------------------------------------------------------- W&B
def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc
        from urllib.parse import urlparse

        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        rc = netrc.netrc(os.environ.get("NETRC") or os.path.expanduser("~/.netrc"))
        return rc.authenticators(host) is not None
    except Exception:  # noqa: BLE001 - no netrc / unreadable: not logged in
        return False


def wandb_mode(mode: str | None = "auto") -> str:
    """``auto``: $WANDB_MODE if set, else online when logged in, else offline."""
    if mode in (None, "", "auto"):
        env = os.environ.get("WANDB_MODE")
        if env:
            return env
        return "online" if _wandb_logged_in() else "offline"
    return str(mode)


def log_to_wandb(results: Mapping[str, Any], out_dir: Path, config: Mapping[str, Any] | None,
                 wandb_cfg: Mapping[str, Any] | None, plot_path: Path | None,
                 videos: Mapping[str, Path] | None = None) -> dict:
    """One W&B run: config, per-episode table, success-vs-latency scatter, summary, plot, videos."""
    import wandb  # lazily: only when logging is on

    cfg = dict(wandb_cfg or {})
    mode = wandb_mode(cfg.get("mode", "auto"))
    run = wandb.init(
        project=cfg.get("project") or "asd-policy",
        entity=cfg.get("entity"),
        name=cfg.get("name"),
        group=cfg.get("group"),
        tags=list(cfg.get("tags") or []) or None,
        job_type="eval",
        dir=str(out_dir),
        mode=mode,
        config=dict(config or {}),
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        rows = results["episodes"]
        cols = ["sampler", "episode", "seed", "success", "steps", "return", "chunks",
                "chunk_latency_ms_mean", "chunk_latency_ms_p95", "sequential_calls_mean", "nfe_mean",
                "error"]
        extra = [c for c in ("deadline_misses", "skipped_actions", "achieved_hz") if rows and c in rows[0]]
        cols += extra
        ep_table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        sum_cols = ["sampler", "chunk_latency_ms_mean", "success_rate", "ci95_lo", "ci95_hi",
                    "sequential_calls_mean", "nfe_mean", "speedup_vs_ddpm"]
        sum_table = wandb.Table(columns=sum_cols, data=[
            [name, s["chunk_latency_ms"]["mean"], s["success_rate"], s["success_ci95"][0],
             s["success_ci95"][1], s["sequential_calls_mean"], s["nfe_mean"], s["speedup_vs_ddpm"]]
            for name, s in results["samplers"].items()])
        payload: dict[str, Any] = {
            "episodes": ep_table,
            "samplers": sum_table,
            "success_vs_latency": wandb.plot.scatter(
                sum_table, "chunk_latency_ms_mean", "success_rate",
                title=f"{results['task']}: success vs chunk latency (ms)"),
        }
        if plot_path is not None and Path(plot_path).exists():
            payload["success_vs_latency_png"] = wandb.Image(str(plot_path))
        for key, path in (videos or {}).items():
            payload[f"video/{key}"] = wandb.Video(str(path), format="gif")
        run.log(payload)
        summary: dict[str, Any] = {"task": results["task"], "checkpoint": results["checkpoint"],
                                   "device": results["device"]}
        for name, s in results["samplers"].items():
            summary[f"{name}/episodes"] = s["episodes"]
            summary[f"{name}/success_rate"] = s["success_rate"]
            summary[f"{name}/success_ci95_lo"] = s["success_ci95"][0]
            summary[f"{name}/success_ci95_hi"] = s["success_ci95"][1]
            for q, v in s["chunk_latency_ms"].items():
                summary[f"{name}/chunk_latency_ms_{q}"] = v
            for q, v in (s.get("action_latency_ms") or {}).items():
                summary[f"{name}/action_latency_ms_{q}"] = v
            summary[f"{name}/sequential_calls_mean"] = s["sequential_calls_mean"]
            summary[f"{name}/nfe_mean"] = s["nfe_mean"]
            summary[f"{name}/speedup_vs_ddpm"] = s["speedup_vs_ddpm"]
        run.summary.update(summary)
        # The same numbers as a file in the run (uploaded with it; offline runs keep their summary
        # only inside the binary run-*.wandb log, so this makes it readable without syncing).
        (Path(run.dir) / "eval_summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        info = {"mode": mode, "dir": str(Path(run.dir).parent),
                "url": run.url if mode == "online" else None}
    finally:
        run.finish()
    return info


# ---------------------------------------------------------------------------------- resume
def _read_rows(path: Path) -> list[dict]:
    rows: list[dict] = []
    if not path.exists():
        return rows
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that episode runs again
    return rows


def _run_meta(task: str | None, checkpoint: str | None, seed: int, specs: Sequence[SamplerSpec],
              max_steps: int | None, realtime: bool, n_action_steps: int | None) -> dict:
    return {
        "task": task,
        "checkpoint": checkpoint,
        "seed": int(seed),
        "samplers": {s.name: s.as_dict() for s in specs},
        "max_steps": max_steps,
        "realtime": bool(realtime),
        "n_action_steps": n_action_steps,
    }


def _check_resume_meta(old: dict, new: dict, out_dir: Path) -> None:
    for key in ("task", "checkpoint", "seed", "max_steps", "realtime", "n_action_steps"):
        if old.get(key) != new.get(key):
            raise EvalError(
                f"cannot resume {out_dir}: it was run with {key}={old.get(key)!r}, now {key}={new.get(key)!r}"
            )
    for name, cfg in new["samplers"].items():
        if name in old.get("samplers", {}) and old["samplers"][name] != cfg:
            raise EvalError(
                f"cannot resume {out_dir}: sampler {name!r} was {old['samplers'][name]}, now {cfg}"
            )


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ---------------------------------------------------------------------------------- main
def evaluate(
    task: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    policy: Any = None,
    env_fn: Callable[..., Any] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    samplers: Iterable[str] | Mapping[str, Mapping[str, Any]] = ("ddpm", "asd", "ddim"),
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    episodes: int = 10,
    seed: int = 0,
    num_envs: int = 1,
    vector_env: str | None = None,
    out_dir: str | os.PathLike = ".",
    resume: bool = False,
    device: str = "cpu",
    max_steps: int | None = None,
    n_action_steps: int | None = None,
    warmup: bool = True,
    realtime: bool = False,
    control_hz: float | None = None,
    logger: str | None = "none",
    wandb_config: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    videos: int = 0,
    progress: bool = True,
    verbose: bool = True,
    command: str | None = None,
) -> dict:
    """Run every sampler on episodes ``0..episodes-1`` (env seed ``seed + i``) and report.

    Either ``checkpoint`` (loaded with :func:`load_checked_policy`) or a ready ``policy``;
    either ``task`` (envs from ``asd_envs.make_env(task, **env_kwargs)``) or ``env_fn``
    (``env_fn(render_mode=None|"rgb_array") -> gymnasium.Env``). ``num_envs`` episodes run in
    lockstep with one batched inference per chunk (``vector_env``: None = a plain list of envs,
    an env failure fails only its episode; ``"sync"``/``"async"`` = a gymnasium vector env).
    ``realtime=True`` runs each episode at the control rate on the wall clock
    (:func:`asd_policy.realtime.run_realtime`). ``logger="wandb"`` logs the report to W&B
    (``wandb_config``: project, entity, mode auto|offline|online|disabled, name, group, tags).
    Writes ``results.json``, ``episodes.jsonl``, ``run_meta.json`` and the PNG into ``out_dir``
    and returns the results dict (with ``"paths"`` and, when logged, ``"wandb"``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = resolve_samplers(samplers, presets)
    episodes = int(episodes)
    if episodes < 1:
        raise EvalError(f"episodes must be >= 1, got {episodes}")
    num_envs = max(1, int(num_envs))
    if realtime:
        num_envs = 1
    if vector_env not in (None, "", "none", "sync", "async"):
        raise EvalError(f"vector_env must be none, sync or async, got {vector_env!r}")
    if logger not in (None, "none", "wandb"):
        raise EvalError(f"logger must be wandb or none, got {logger!r}")

    spec_task = None
    if task is not None and env_fn is None:
        try:
            import asd_envs
        except ImportError as exc:  # pragma: no cover
            raise EvalError(f"cannot import asd_envs: {exc}") from None
        try:
            spec_task = asd_envs.get_task(task)
        except (ValueError, KeyError) as exc:
            raise EvalError(" ".join(str(exc).split())) from None
        kw = dict(env_kwargs or {})

        def env_fn(render_mode: str | None = None, _kw=kw):  # noqa: E306
            extra = {"render_mode": render_mode} if render_mode else {}
            return asd_envs.make_env(task, **_kw, **extra)
    if env_fn is None:
        raise EvalError("give a task name or an env_fn")

    if policy is None:
        if checkpoint is None:
            raise EvalError("give checkpoint=<path> (or a policy object)")
        policy = load_checked_policy(
            checkpoint, task, device,
            obs_dim=spec_task.obs_dim if spec_task else None,
            action_dim=spec_task.action_dim if spec_task else None)
    dev = policy_device(policy)
    if control_hz is None and spec_task is not None:
        control_hz = spec_task.control_hz

    render_mode = "rgb_array" if videos > 0 else None

    def make_one() -> Any:
        return env_fn(render_mode=render_mode) if render_mode else env_fn()

    def make_batch() -> Any:
        if vector_env in ("sync", "async"):
            import gymnasium as gym

            cls = gym.vector.SyncVectorEnv if vector_env == "sync" else gym.vector.AsyncVectorEnv
            return cls([make_one for _ in range(num_envs)])
        return [make_one() for _ in range(num_envs)]

    try:
        envs = make_batch()
    except EvalError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise EvalError(f"cannot create the environment for task {task!r}: {type(exc).__name__}: {exc}") from None
    probe = envs.envs[0] if hasattr(envs, "envs") else (envs[0] if isinstance(envs, list) else None)
    if probe is not None:
        _check_dims(policy, probe, task)
    if control_hz is None and probe is not None:
        control_hz = getattr(probe.unwrapped, "control_hz", None) or probe.metadata.get("control_hz")

    ckpt_str = str(checkpoint) if checkpoint is not None else None
    meta = _run_meta(task, ckpt_str, seed, specs, max_steps, realtime, n_action_steps)
    rows_path, meta_path = out / EPISODES_NAME, out / META_NAME
    rows: list[dict] = []
    if resume:
        if meta_path.exists():
            _check_resume_meta(json.loads(meta_path.read_text()), meta, out)
            old = json.loads(meta_path.read_text())
            meta["samplers"] = {**old.get("samplers", {}), **meta["samplers"]}
        rows = _read_rows(rows_path)
        # keep one row per (sampler, episode): the first written
        seen, uniq = set(), []
        for r in rows:
            key = (r.get("sampler"), r.get("episode"))
            if key not in seen and r.get("seed") == seed + int(r.get("episode", -10**9)):
                seen.add(key)
                uniq.append(r)
        rows = uniq
    _atomic_json(meta_path, meta)
    # rewrite the jsonl with the rows kept (drops a torn last line) and append from here on
    tmp_rows = rows_path.with_suffix(".jsonl.tmp")
    with tmp_rows.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_rows, rows_path)  # atomic: a crash here never loses finished episodes
    done = {(r["sampler"], int(r["episode"])) for r in rows}
    names = {s.name for s in specs}
    n_done = sum(1 for s, e in done if s in names and e < episodes)
    total = len(specs) * episodes

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=n_done, desc=f"eval {task or ''}".strip(), unit="ep",
                   dynamic_ncols=True, file=sys.stderr)
    frames_saved: dict[str, Path] = {}
    video_counts = {s.name: 0 for s in specs}
    warmed: set[str] = set()
    t0 = time.perf_counter()
    complete = False
    rows_file = rows_path.open("a")
    try:
        for b0 in range(0, episodes, num_envs):
            batch_eps = list(range(b0, min(b0 + num_envs, episodes)))
            for spec in specs:
                todo = [e for e in batch_eps if (spec.name, e) not in done]
                if not todo:
                    continue
                gen = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + todo[0])
                if warmup and spec.name not in warmed:
                    try:
                        _warmup(policy, spec, envs, dev)
                    except (ValueError, TypeError, NotImplementedError) as exc:
                        msg = " ".join(str(exc).split())
                        raise EvalError(f"sampler {spec.name!r} ({spec.as_dict()}) does not run on this "
                                        f"policy: {type(exc).__name__}: {msg}") from None
                    warmed.add(spec.name)
                record = videos > 0 and video_counts[spec.name] < videos
                if realtime:
                    r_ep, extra = _realtime_episode(envs, policy, spec, seed + todo[0], control_hz,
                                                    max_steps, gen, n_action_steps)
                    results, extras = [r_ep], [extra]
                else:
                    seeds = [seed + e for e in todo]
                    if isinstance(envs, list):
                        batch_envs = envs[: len(todo)]
                    else:  # a vector env has a fixed size: pad with extra seeds, drop their results
                        batch_envs = envs
                        seeds = seeds + [seed + episodes + 10_000 + j for j in range(num_envs - len(todo))]
                    results = rollout_episodes(batch_envs, policy, seeds, spec, gen, max_steps=max_steps,
                                               n_action_steps=n_action_steps, record_frames=record)
                    results = results[: len(todo)]
                    extras = [None] * len(todo)
                for e, r, ex in zip(todo, results, extras):
                    row = _row(spec.name, e, r, ex)
                    rows.append(row)
                    done.add((spec.name, e))
                    rows_file.write(json.dumps(row, default=_json_default) + "\n")
                    rows_file.flush()
                    os.fsync(rows_file.fileno())
                    if r.frames:
                        fps = control_hz or 20
                        p = _write_gif(r.frames, out / "videos" / f"{spec.name}_ep{e:03d}.gif", fps)
                        if p is not None:
                            frames_saved[f"{spec.name}_ep{e:03d}"] = p
                            video_counts[spec.name] += 1
                        r.frames = None
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{spec.name} ep{e} {'ok' if r.success else 'fail'}")
                # an env that raised may be left broken: replace it
                if any(r.error for r in results):
                    envs = _replace_broken(envs, results, make_one, make_batch)
        complete = True
    finally:
        rows_file.close()
        if bar is not None:
            bar.close()
        _close_envs(envs)
        results_dict = _assemble(task, ckpt_str, dev, specs, rows, seed, episodes, complete,
                                 time.perf_counter() - t0, meta)
        if command:
            results_dict["command"] = command
        _atomic_json(out / RESULTS_NAME, results_dict)

    plot_path = plot_success_vs_latency(results_dict, out / PLOT_NAME)
    results_dict["paths"] = {"results": str(out / RESULTS_NAME), "episodes": str(rows_path),
                             "plot": str(plot_path)}
    if frames_saved:
        results_dict["paths"]["videos"] = {k: str(v) for k, v in frames_saved.items()}
    if logger == "wandb":
        try:
            results_dict["wandb"] = log_to_wandb(results_dict, out, config or {
                "task": task, "checkpoint": ckpt_str, "episodes": episodes, "seed": seed,
                "samplers": {s.name: s.as_dict() for s in specs}, "num_envs": num_envs,
                "realtime": realtime, "device": str(dev)}, wandb_config, plot_path, frames_saved)
        except Exception as exc:  # noqa: BLE001 - the results are on disk; W&B is a copy of them
            results_dict["wandb"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"warning: W&B logging failed ({type(exc).__name__}: {exc}); results are in {out}",
                  file=sys.stderr)
    _atomic_json(out / RESULTS_NAME, results_dict)
    if verbose:
        print(format_table(results_dict))
    return results_dict


def _assemble(task, ckpt, dev, specs, rows, seed, episodes, complete, wall, meta) -> dict:
    names = [s.name for s in specs]
    keep = sorted((r for r in rows if r["sampler"] in names and r["episode"] < episodes),
                  key=lambda r: (names.index(r["sampler"]), r["episode"]))
    return {
        "task": task,
        "checkpoint": ckpt,
        "device": str(dev),
        "samplers": summarize(keep, specs),
        "episodes": [_flat_row(r) for r in keep],
        "device_name": describe_device(dev),
        "seed": int(seed),
        "episodes_requested": int(episodes),
        "complete": bool(complete),
        "wall_s": round(wall, 3),
        "torch": torch.__version__,
    }


def _warmup(policy: Any, spec: SamplerSpec, envs: Any, dev: torch.device) -> None:
    """One untimed inference per sampler, so one-off costs don't land in the first chunk."""
    from asd_policy.rollout import infer_chunk

    if hasattr(envs, "single_observation_space"):
        space, n = envs.single_observation_space, envs.num_envs
    else:
        space, n = envs[0].observation_space, len(envs)
    obs = np.zeros((n, policy.n_obs_steps, int(np.prod(space.shape))), dtype=np.float32)
    infer_chunk(policy, obs, spec, torch.Generator(device=dev).manual_seed(0), dev)


def _realtime_episode(envs, policy, spec, seed, control_hz, max_steps, gen, n_action_steps):
    from asd_policy.realtime import run_realtime

    env = envs[0] if isinstance(envs, list) else envs.envs[0]
    ep = run_realtime(env, policy, control_hz=control_hz, sampler=spec, seed=seed,
                      max_steps=max_steps, generator=gen, n_action_steps=n_action_steps)
    rep = ep.report
    r = EpisodeResult(seed=seed, success=ep.success, steps=ep.steps, episode_return=ep.episode_return,
                      error=ep.error, wall_s=rep.wall_s or 0.0,
                      chunk_latency_ms=list(ep.chunk_latency_ms), chunk_actions=list(ep.chunk_actions),
                      sequential_calls=list(ep.sequential_calls), nfe=list(ep.nfe))
    extra = {
        "ticks": rep.ticks, "deadline_misses": rep.deadline_misses,
        "skipped_actions": rep.skipped_actions, "stale_chunks": rep.stale_chunks,
        "achieved_hz": rep.achieved_hz, "idle_fraction": rep.idle_fraction, "overruns": rep.overruns,
    }
    return r, extra


def _replace_broken(envs, results, make_one, make_batch):
    if isinstance(envs, list):
        for i, r in enumerate(results):
            if r.error and i < len(envs):
                _close_envs([envs[i]])
                envs[i] = make_one()
        return envs
    _close_envs(envs)
    return make_batch()


def _close_envs(envs: Any) -> None:
    items = envs if isinstance(envs, list) else [envs]
    for e in items:
        try:
            e.close()
        except Exception:  # noqa: BLE001
            pass
