"""The one W&B setup for training and evaluation: mode detection and run start.

``wandb`` is imported only here and only when a run starts, so a machine without it (or without
a login) still trains and evaluates; a run is offline unless the user is logged in or
``$WANDB_MODE`` says otherwise (:func:`asd_policy.core.config.wandb_mode`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from asd_policy.core.config import WandbConfig, wandb_mode

__all__ = ["start_run"]


def start_run(cfg: WandbConfig, *, job_type: str, directory: str | os.PathLike, config: Mapping[str, Any],
              default_name: str | None = None, run_id: str | None = None) -> Any:
    """``wandb.init`` with the project's settings; ``run_id`` resumes that run (training resume)."""
    import wandb

    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=cfg.name or default_name,
        group=cfg.group,
        tags=list(cfg.tags) or None,
        job_type=job_type,
        dir=str(directory),
        mode=wandb_mode(cfg.mode),
        config=dict(config),
        id=run_id,
        resume="allow" if run_id else None,
        settings=wandb.Settings(silent=True, console="off"),
    )
