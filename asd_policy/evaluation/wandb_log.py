"""An evaluation as a W&B run: config, per-episode and per-sampler tables, the success-versus-latency
scatter and PNG, videos, and the summary (also written as files/eval_summary.json in the run)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from asd_policy.core.config import WandbConfig, wandb_mode
from asd_policy.core.io import json_default
from asd_policy.core.wandb_setup import start_run

__all__ = ["log_to_wandb"]


def _fidelity(s: Mapping[str, Any]) -> dict[str, Any]:
    """A sampler's fidelity numbers as W&B keys (the reference has no distance or p of its own)."""
    f = s.get("fidelity") or {}
    return {"fidelity_distance": f.get("distance"), "fidelity_null_distance": f.get("null_distance"),
            "fidelity_p": f.get("p_value")}


def log_to_wandb(results: Mapping[str, Any], out_dir: Path, config: Mapping[str, Any], wandb_cfg: WandbConfig,
                 plot_path: Path | None, videos: Mapping[str, Path] | None = None) -> dict:
    """One W&B run in ``out_dir``/wandb; returns ``{"mode", "dir", "url"}``."""
    import wandb

    mode = wandb_mode(wandb_cfg.mode)
    run = start_run(wandb_cfg, job_type="eval", directory=out_dir, config=config)
    try:
        rows = results["episodes"]
        cols = ["sampler", "episode", "seed", "success", "steps", "return", "chunks",
                "chunk_latency_ms_mean", "chunk_latency_ms_p95", "sequential_calls_mean", "nfe_mean",
                "error"]
        extra = [c for c in ("chunk_encode_ms_mean", "deadline_misses", "skipped_actions", "stale_chunks", "extended_actions", "achieved_hz",
                             "delay_ticks_mean", "boundary_jumps_mean", "within_chunk_jumps_mean", "inpaint_prefix_mean")
                 if rows and c in rows[0]]
        cols += extra
        ep_table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        sum_cols = ["sampler", "chunk_latency_ms_mean", "success_rate", "ci95_lo", "ci95_hi",
                    "sequential_calls_mean", "nfe_mean", "speedup_vs_ddpm"]
        fid_cols = ["fidelity_distance", "fidelity_null_distance", "fidelity_p"] if results.get("fidelity") else []
        enc_cols = (["encode_ms_mean", "sampler_ms_mean"]
                    if any("encode_ms" in s for s in results["samplers"].values()) else [])
        sum_table = wandb.Table(columns=sum_cols + fid_cols + enc_cols, data=[
            [name, s["chunk_latency_ms"]["mean"], s["success_rate"], s["success_ci95"][0],
             s["success_ci95"][1], s["sequential_calls_mean"], s["nfe_mean"], s["speedup_vs_ddpm"]]
            + [_fidelity(s)[c] for c in fid_cols]
            + [(s.get(c[: -len("_mean")]) or {}).get("mean") for c in enc_cols]
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
            if s.get("fidelity"):
                summary.update({f"{name}/{k}": v for k, v in _fidelity(s).items()})
            for k, v in (s.get("realtime") or {}).items():  # clock, transition, delay, misses, jumps...
                if isinstance(v, dict):
                    summary.update({f"{name}/realtime/{k}_{q}": x for q, x in v.items()})
                else:
                    summary[f"{name}/realtime/{k}"] = v
        if results.get("fidelity"):
            f = results["fidelity"]
            summary.update({"fidelity/chunks": f["chunks"], "fidelity/observations": len(f["observations"]),
                            "fidelity/asd_exact": f["verdict"]["exact"]})
        run.summary.update(summary)
        # The same numbers as a file in the run (uploaded with it; offline runs keep their summary
        # only inside the binary run-*.wandb log, so this makes it readable without syncing).
        (Path(run.dir) / "eval_summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
        info = {"mode": mode, "dir": str(Path(run.dir).parent),
                "url": run.url if mode == "online" else None}
    finally:
        run.finish()
    return info
