#!/usr/bin/env python
"""Success vs latency of every sampler on the same seeded episodes.

    python scripts/eval.py                                   # default task, shipped checkpoint
    python scripts/eval.py task=reach_around checkpoint=checkpoints/reach_around \
        samplers=[ddpm,asd,ddim] episodes=50
    python scripts/eval.py ... resume=true                   # continue an interrupted run
    python scripts/eval.py -m samplers=[ddpm],[asd] task=reach_around,fetch_push   # sweep
    python scripts/eval.py -m hydra/launcher=slurm hydra.launcher.partition=gpu ... # on SLURM

The settings and their defaults are the fields of ``asd_policy.evaluation.EvalConfig``;
configs/eval.yaml only picks the default task and the output directories. Writes results.json,
episodes.jsonl, success_vs_latency.png (and wandb/ when logging) into the hydra run directory
(outputs/eval/<task>/<time>/), prints the table and where everything is.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from asd_policy.core.config import ConfigError, check_overrides, from_hydra
from asd_policy.evaluation import (
    EPISODES_NAME,
    META_NAME,
    EvalConfig,
    EvalError,
    evaluate,
)

ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


def _resume_dir(cfg: EvalConfig, run_dir: Path) -> Path:
    """Where to continue: a given run dir, this run dir (a re-run sweep job), or the latest
    earlier run of the same task/checkpoint/seed/samplers next to this one."""
    if isinstance(cfg.resume, str):
        d = Path(to_absolute_path(cfg.resume))
        if not (d / EPISODES_NAME).exists():
            raise EvalError(f"resume={cfg.resume}: no {EPISODES_NAME} in {d}")
        return d
    if (run_dir / EPISODES_NAME).exists():
        return run_dir
    wanted = set(cfg.samplers)
    candidates = []
    for meta_path in run_dir.parent.glob(f"*/{META_NAME}"):
        d = meta_path.parent
        if d == run_dir or not (d / EPISODES_NAME).exists():
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (meta.get("task") == cfg.task.name and meta.get("checkpoint") == cfg.checkpoint
                and meta.get("seed") == cfg.seed and wanted <= set(meta.get("samplers", {}))):
            candidates.append((meta_path.stat().st_mtime, d))
    if not candidates:
        print(f"resume: no earlier run of task={cfg.task.name} seed={cfg.seed} with these samplers under "
              f"{run_dir.parent}; starting fresh", file=sys.stderr)
        return run_dir
    return max(candidates)[1]


def _config(cfg: DictConfig) -> EvalConfig:
    """The validated EvalConfig, its checkpoint an absolute path (default checkpoints/<task>, or
    checkpoints/<task>_image for a task with cameras; none when a policy_server serves the policy)."""
    config = from_hydra(cfg)
    if config.policy_server:
        return config  # the server's checkpoint is the policy
    checkpoint = config.checkpoint or config.task.default_checkpoint()
    return dataclasses.replace(config, checkpoint=to_absolute_path(checkpoint))


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's INFO line on import
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir = run_dir
    try:
        config = _config(cfg)
        if config.resume:
            out_dir = _resume_dir(config, run_dir)
            config = dataclasses.replace(config, resume=True)
            if out_dir != run_dir:
                print(f"resuming {out_dir}", file=sys.stderr)
        command = " ".join(["python scripts/eval.py", *(shlex.quote(a) for a in sys.argv[1:])])
        results = evaluate(config, out_dir=out_dir, command=command)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished episodes are kept in {out_dir}/{EPISODES_NAME}; "
              f"continue with: python scripts/eval.py <same overrides> resume={out_dir}", file=sys.stderr)
        sys.exit(130)
    paths = results["paths"]
    print(f"results: {paths['results']}")
    print(f"plot:    {paths['plot']}")
    wb = results.get("wandb")
    if wb and "error" not in wb:
        if wb.get("mode") == "online" and wb.get("url"):
            print(f"W&B:     {wb['url']}")
        else:
            print(f"W&B:     {wb['mode']} run in {wb['dir']} (upload: wandb sync {wb['dir']})")


if __name__ == "__main__":
    check_overrides(EvalConfig, sys.argv[1:], Path(__file__).resolve().parents[1] / "configs" / "task")
    main()
