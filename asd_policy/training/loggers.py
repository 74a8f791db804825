"""Where training metrics go: ``out/metrics.jsonl`` always, W&B when ``logger=wandb``.

A logger is any object with ``log(metrics, step)`` and ``finish()``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asd_policy.core.config import WandbConfig

__all__ = ["JsonlLogger", "WandbLogger"]


class JsonlLogger:
    """One JSON object per logged step, appended (a resumed run continues the same file)."""

    def __init__(self, path: Path):
        self.f = open(path, "a")

    def log(self, metrics: dict, step: int) -> None:
        self.f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.f.flush()

    def finish(self) -> None:
        self.f.close()


class WandbLogger:
    """A W&B run (:func:`asd_policy.core.wandb_setup.start_run`); ``run_id`` continues a resumed run's."""

    def __init__(self, cfg: WandbConfig, out: Path, config: dict[str, Any], run_id: str | None):
        from asd_policy.core.wandb_setup import start_run

        self.run = start_run(cfg, job_type="train", directory=out, config=config, default_name=out.name, run_id=run_id)
        self.run_id = self.run.id

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()
