"""Assembling a training run from its config: data, policy, optimiser, resumed state, loggers.

:func:`setup` returns a :class:`TrainRun`, the state the loop (:mod:`asd_policy.training.loop`)
advances: everything built once, plus the few numbers that change as it runs.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asd_policy.core.config import ConfigError
from asd_policy.core.io import write_json
from asd_policy.policy.checkpoint import load_policy
from asd_policy.policy.diffusion_policy import DiffusionPolicy
from asd_policy.policy.normalizer import AffineNormalizer, MinMaxNormalizer
from asd_policy.policy.weights import load_policy_state, policy_state
from asd_policy.training.config import TrainConfig
from asd_policy.training.distributed import Dist, init_distributed, wrap_model
from asd_policy.training.loggers import JsonlLogger, WandbLogger
from asd_policy.training.optim import EMA, LR_SETTINGS, Precision, cosine_lr, precision
from asd_policy.training.state import STATE_DIR, has_state, load_state
from asd_policy.training.windows import EpochBatches, WindowDataset

__all__ = ["TrainData", "TrainRun", "setup", "note"]


def note(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr)


@dataclass
class TrainData:
    """The demonstrations as training and validation windows, and what the checkpoint records of them."""

    path: str
    train: WindowDataset
    valid: WindowDataset | None
    obs_normalizer: MinMaxNormalizer
    action_normalizer: MinMaxNormalizer
    obs_dim: int
    action_dim: int
    obs_keys: list[str]
    task_name: str | None
    info: dict
    image_features: list[dict] = field(default_factory=list)  # [{"name": "<camera>_image", "shape": [3, H, W]}]


def _image_features(cameras: list[str], episodes: list, path: str) -> list[dict]:
    """The policy's camera features: each camera's frames must be in every episode, one size throughout."""
    features = []
    for camera in cameras:
        key = f"{camera}_image"
        have = sorted({k for e in episodes for k in (getattr(e, "images", None) or {})})
        if any(key not in (getattr(e, "images", None) or {}) for e in episodes):
            raise ConfigError(f"policy.cameras: {path!r} has no {key!r} frames in every episode (it has "
                              f"{have or 'no camera frames'}); collect with the camera (task=<task>_image) or drop it")
        shapes = {tuple(e.images[key].shape[1:]) for e in episodes}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ConfigError(f"policy.cameras: {key!r} frames of {path!r} must be one [H, W, 3] size, got {sorted(shapes)}")
        h, w, c = next(iter(shapes))
        features.append({"name": key, "shape": [c, h, w]})
    return features


def _camera_policy_keys(cfg: TrainConfig) -> list[str] | None:
    """A camera policy's default observation keys: the robot's own state (the task's ``state_keys``),
    as robomimic's image policies read it; where the goal and the objects are comes from the cameras."""
    if not cfg.policy.cameras or not cfg.task.name:
        return None
    import asd_envs

    return list(asd_envs.get_task(cfg.task.name).state_keys) or None


def load_data(cfg: TrainConfig, device: torch.device) -> TrainData:
    from asd_policy.data.load import load_demonstrations

    path = cfg.dataset_path()
    demos = load_demonstrations(path, obs_keys=cfg.obs_keys or _camera_policy_keys(cfg))
    train_eps = demos.train_episodes or demos.episodes
    valid_eps = demos.valid_episodes
    spec = cfg.policy
    images = _image_features(spec.cameras, demos.episodes, path)
    pad = dict(horizon=spec.horizon, pad_before=spec.n_obs_steps - 1, pad_after=spec.n_action_steps - 1,
               image_keys=tuple(f["name"] for f in images))
    train = WindowDataset(train_eps, **pad).to(device)
    info = {
        "dataset": os.path.abspath(path),
        "num_train_demos": len(train_eps),
        "num_valid_demos": len(valid_eps),
        "num_train_windows": len(train),
        "env_args": demos.env_args,
    }
    return TrainData(
        path=path,
        train=train,
        valid=WindowDataset(valid_eps, **pad).to(device) if valid_eps else None,
        obs_normalizer=MinMaxNormalizer.fit(np.concatenate([e.obs for e in train_eps])),
        action_normalizer=MinMaxNormalizer.fit(np.concatenate([e.actions for e in train_eps])),
        obs_dim=demos.obs_dim,
        action_dim=demos.action_dim,
        obs_keys=list(demos.obs_keys),
        task_name=cfg.task.name or demos.task_name,
        info=info,
        image_features=images,
    )


@dataclass
class TrainRun:
    """One run: what :func:`setup` built, and the numbers the loop updates."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    out: Path
    data: TrainData
    policy: DiffusionPolicy  # trained in place
    networks: torch.nn.Module  # what trains: policy.networks() (the U-Net, and a camera policy's encoder)
    ema: EMA
    ema_policy: DiffusionPolicy  # the policy with the EMA weights: validated, rolled out and saved
    opt: torch.optim.Optimizer
    amp: Precision
    gen: torch.Generator  # the loss's noise and timesteps
    t_start: float
    start_step: int = 0
    run_id: str | None = None  # the W&B run, kept across resumes
    prior_wall: float = 0.0  # wall time of the runs this one resumes
    net: torch.nn.Module | None = None  # what the loss runs through (DDP / compiled)
    batches: EpochBatches | None = None
    loggers: list[Any] = field(default_factory=list)
    bar: Any = None
    last_train_loss: float | None = None
    last_val: float | None = None
    smooth_loss: float | None = None
    rollout_metrics: dict = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR

    def wall_time(self) -> float:
        return self.prior_wall + time.perf_counter() - self.t_start

    def log(self, metrics: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)


def _image_normalizer(features: list[dict]) -> AffineNormalizer | None:
    """[0, 1] pixels to [-1, 1], every channel of every camera (frames need no fitted statistics)."""
    channels = sum(f["shape"][0] for f in features)
    return AffineNormalizer(np.full(channels, 2.0), np.full(channels, -1.0), np.full(channels, 0.5),
                            np.full(channels, 0.5)) if features else None


def _build(cfg: TrainConfig, dist: Dist, device: torch.device, t_start: float) -> TrainRun:
    data = load_data(cfg, device)
    spec = cfg.policy
    if data.image_features and dist.world_size > 1:
        raise ConfigError(f"a camera policy trains in one process (its image encoder is not wrapped for "
                          f"{dist.world_size} processes yet); run without torchrun, or without policy.cameras")
    config = spec.policy_config(data.obs_dim, data.action_dim, task_name=data.task_name, obs_keys=data.obs_keys,
                                image_features=data.image_features or None,
                                vision=spec.vision if data.image_features else None)
    img_norm = _image_normalizer(data.image_features)
    policy = DiffusionPolicy(config, data.obs_normalizer, data.action_normalizer, image_normalizer=img_norm).to(device)
    if cfg.init_from:
        _init_weights(policy, cfg.init_from)
    networks = policy.networks().train()
    ema = EMA(networks, cfg.ema_power, cfg.ema_max_decay)
    ema_policy = DiffusionPolicy(policy.config, data.obs_normalizer, data.action_normalizer,
                                 image_normalizer=img_norm).to(device)
    ema_policy.use_networks(ema.model)
    opt = torch.optim.AdamW(networks.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    amp = precision(cfg.amp, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + dist.rank)
    return TrainRun(cfg, dist, device, Path(cfg.out), data, policy, networks, ema, ema_policy, opt, amp, gen, t_start)


def _init_weights(policy: DiffusionPolicy, path: str) -> None:
    """Fine-tuning: the networks of checkpoint ``path`` (U-Net, and a camera policy's encoder) into
    ``policy``; a :class:`ConfigError` when they are not the networks this run's settings build."""
    source = load_policy(path)  # CheckpointError (a ValueError) names a missing or corrupt checkpoint
    try:
        load_policy_state(policy, policy_state(source))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"init_from={path!r} holds networks of another shape than this run's policy ({first}); "
                          f"train with its settings (policy size, horizons, cameras, vision: see its policy.json), "
                          f"or drop init_from") from None


def _resume(run: TrainRun) -> None:
    """Continue from ``out/train_state`` (and say on stderr what differs from the run that saved it)."""
    cfg = run.cfg
    meta = load_state(run.state_dir, run.networks, run.ema, run.opt, run.gen, run.amp.scaler)
    run.start_step, run.run_id = int(meta["step"]), meta.get("wandb_run_id")
    if run.start_step:
        run.prior_wall, run.last_val = float(meta.get("wall_time_s", 0.0)), meta.get("val_loss")
    if not run.dist.is_main:
        return
    saved = meta.get("config", {})
    if saved.get("dataset") is not None and os.path.abspath(saved["dataset"]) != run.data.info["dataset"]:
        note(f"note: resuming a run that used dataset {saved['dataset']!r}")
    new = {k: getattr(cfg, k) for k in LR_SETTINGS}
    old = {k: saved.get(k, v) for k, v in new.items()}
    old_lr, new_lr = cosine_lr(run.start_step, **old), cosine_lr(run.start_step, **new)
    if old_lr != new_lr:
        # Extending a finished run is a warm restart, not a continuation: say so, since the
        # learning rate jumps back up from where the old schedule had decayed it.
        note(
            f"note: resuming at step {run.start_step} with a different schedule (steps {old['steps']} -> "
            f"{cfg.steps}); the learning rate goes from {old_lr:.3g} to {new_lr:.3g} (a warm restart of the cosine)"
        )


def _open_loggers(run: TrainRun, logger: Any) -> None:
    cfg = run.cfg
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(run.out / "train_config.json", cfg.to_dict())
    run.loggers.append(JsonlLogger(run.out / "metrics.jsonl"))
    if logger is not None:
        run.loggers.append(logger)
    elif cfg.logger == "wandb":
        wl = WandbLogger(cfg.wandb, run.out, cfg.to_dict(), run.run_id)
        run.run_id = wl.run_id
        run.loggers.append(wl)


def setup(cfg: TrainConfig, logger: Any = None) -> TrainRun:
    """Everything the loop needs, resumed from ``out/train_state`` when ``cfg.resume`` and it exists."""
    t_start = time.perf_counter()
    cfg = dataclasses.replace(cfg, out=cfg.run_dir())
    dist, device = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed + dist.rank)
    run = _build(cfg, dist, device, t_start)
    if cfg.resume and has_state(run.state_dir):
        _resume(run)
    run.net = wrap_model(run.policy.model, dist, device, cfg.compile)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes {dist.world_size}")
    run.batches = EpochBatches(len(run.data.train), cfg.batch_size // dist.world_size, cfg.seed, dist.rank,
                               dist.world_size)
    if dist.is_main:
        _open_loggers(run, logger)
        if cfg.progress and run.start_step < cfg.steps:
            from tqdm.auto import tqdm

            run.bar = tqdm(total=cfg.steps, initial=run.start_step, desc="train", dynamic_ncols=True)
    return run
