#!/usr/bin/env python
"""Success vs latency of every sampler on the same seeded episodes.

    python scripts/eval.py                                   # default task, shipped checkpoint
    python scripts/eval.py task=reach_around checkpoint=checkpoints/reach_around \
        samplers=[ddpm,asd,ddim] episodes=50 seed=0
    python scripts/eval.py ... resume=true                   # continue an interrupted run
    python scripts/eval.py -m samplers=[ddpm],[asd] task=reach_around,fetch_push   # sweep
    python scripts/eval.py -m hydra/launcher=slurm hydra.launcher.partition=gpu ... # on SLURM

Writes results.json, episodes.jsonl, success_vs_latency.png (and wandb/ when logging) into the
hydra run directory (outputs/eval/<task>/<time>/), prints the table and where everything is.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf


def _task_name(cfg: DictConfig) -> str:
    task = cfg.task
    return task if isinstance(task, str) else str(task.name)


def _resume_dir(cfg: DictConfig, run_dir: Path, task: str, checkpoint: str) -> Path:
    """Where to continue: a given run dir, this run dir (a re-run sweep job), or the latest
    earlier run of the same task/checkpoint/seed/samplers next to this one."""
    from asd_policy.evaluation import EPISODES_NAME, META_NAME, EvalError

    res = cfg.resume
    if isinstance(res, str) and res.lower() not in ("true", "false"):
        d = Path(to_absolute_path(res))
        if not (d / EPISODES_NAME).exists():
            raise EvalError(f"resume={res}: no {EPISODES_NAME} in {d}")
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
        if (meta.get("task") == task and meta.get("checkpoint") == checkpoint
                and meta.get("seed") == int(cfg.seed) and wanted <= set(meta.get("samplers", {}))):
            candidates.append((meta_path.stat().st_mtime, d))
    if not candidates:
        print(f"resume: no earlier run of task={task} seed={cfg.seed} with these samplers under "
              f"{run_dir.parent}; starting fresh", file=sys.stderr)
        return run_dir
    return max(candidates)[1]


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    import logging

    import torch

    from asd_policy.evaluation import EvalError, evaluate

    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's INFO line on import

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir = run_dir
    try:
        task = _task_name(cfg)
        if cfg.torch_threads:
            torch.set_num_threads(int(cfg.torch_threads))
        checkpoint = to_absolute_path(str(cfg.checkpoint)) if cfg.checkpoint else None
        if cfg.resume not in (False, None, "false", "False"):
            out_dir = _resume_dir(cfg, run_dir, task, checkpoint)
            if out_dir != run_dir:
                print(f"resuming {out_dir}", file=sys.stderr)
        env_kwargs = {}
        if not isinstance(cfg.task, str) and cfg.task.get("env_kwargs"):
            env_kwargs = OmegaConf.to_container(cfg.task.env_kwargs, resolve=True)
        results = evaluate(
            task=task,
            checkpoint=checkpoint,
            env_kwargs=env_kwargs,
            samplers=list(cfg.samplers),
            presets=OmegaConf.to_container(cfg.presets, resolve=True) if cfg.presets else None,
            episodes=int(cfg.episodes),
            seed=int(cfg.seed),
            num_envs=int(cfg.num_envs),
            vector_env=cfg.vector_env,
            out_dir=out_dir,
            resume=cfg.resume not in (False, None, "false", "False"),
            device=str(cfg.device),
            max_steps=cfg.max_steps,
            n_action_steps=cfg.n_action_steps,
            warmup=bool(cfg.warmup),
            realtime=bool(cfg.realtime),
            control_hz=cfg.control_hz,
            logger=None if cfg.logger in (None, "none", False) else str(cfg.logger),
            wandb_config=OmegaConf.to_container(cfg.wandb, resolve=True),
            config=OmegaConf.to_container(cfg, resolve=True),
            videos=int(cfg.videos),
            progress=bool(cfg.progress),
            verbose=True,
            command=" ".join(["python scripts/eval.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        )
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished episodes are kept in {out_dir}/episodes.jsonl; "
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


def _check_task_args(argv: list[str]) -> None:
    """``task=<unknown>`` -> one line (hydra would print a page), before hydra starts."""
    import re

    known = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "task").glob("*.yaml"))
    for arg in argv:
        m = re.fullmatch(r"task=([\w,]+)", arg)
        if not m or not known:
            continue
        for name in m.group(1).split(","):
            if name not in known:
                print(f"error: unknown task {name!r}; known tasks: {', '.join(known)}", file=sys.stderr)
                sys.exit(2)


if __name__ == "__main__":
    _check_task_args(sys.argv[1:])
    main()
