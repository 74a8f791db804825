"""The training loop: one gradient step at a time, with logging, validation, rollouts and saves.

The run directory ``out`` holds::

    out/checkpoint/    the EMA policy (policy.safetensors + policy.json): load_policy(out/"checkpoint")
    out/train_state/   everything needed to resume (weights, EMA, optimiser, RNG; safetensors + JSON)
    out/metrics.jsonl  every logged metric, one JSON object per line
    out/wandb/         the W&B run (offline unless you are logged in), when logger="wandb"

Re-running with the same ``out`` resumes from ``out/train_state`` (``resume=False`` starts over).
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from asd_policy.policy.checkpoint import save_policy
from asd_policy.policy.diffusion_policy import DiffusionPolicy
from asd_policy.training.config import TrainConfig
from asd_policy.training.distributed import finish_distributed
from asd_policy.training.optim import cosine_lr
from asd_policy.training.run import TrainRun, note, setup
from asd_policy.training.state import CKPT_DIR, save_state
from asd_policy.training.windows import WindowDataset

__all__ = ["RolloutCallback", "TrainResult", "train"]

#: ``rollout_fn(ema_policy, step) -> {"success_rate": ..., ...}``
RolloutCallback = Callable[[DiffusionPolicy, int], dict]


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    wall_time_s: float
    metrics: dict = field(default_factory=dict)


def _due(done: int, every: int, steps: int) -> bool:
    """Whether something done every ``every`` steps (and at the end; 0: never) is due after step ``done``."""
    return every > 0 and (done % every == 0 or done == steps)


def _step(run: TrainRun, step: int) -> tuple[torch.Tensor, float, Any]:
    """One gradient step; returns the loss (not synchronised), the lr and the gradient norm."""
    cfg = run.cfg
    lr = cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
    for g in run.opt.param_groups:
        g["lr"] = lr
    ids = run.batches.ids(step).to(run.device)
    obs, act = run.data.train.batch(ids, cfg.policy.n_obs_steps)
    images = run.data.train.batch_images(ids, cfg.policy.n_obs_steps)
    with run.amp.autocast():
        loss = run.policy.compute_loss(obs, act, model=run.net, generator=run.gen, images=images)
    scaler = run.amp.scaler
    run.opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(run.opt)
    else:
        loss.backward()
    grad_norm = None
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.networks.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(run.opt)
        scaler.update()
    else:
        run.opt.step()
    run.ema.update(run.networks, step)
    return loss, lr, grad_norm


def _log_step(run: TrainRun, step: int, loss: torch.Tensor, lr: float, grad_norm: Any) -> None:
    done = step + 1
    lv = float(loss.detach())  # one host sync per log_every steps
    if not math.isfinite(lv):
        raise FloatingPointError(f"training loss is {lv} at step {done}; lower lr (now {run.cfg.lr}) or use amp=none")
    run.last_train_loss = lv
    run.smooth_loss = lv if run.smooth_loss is None else 0.9 * run.smooth_loss + 0.1 * lv
    m = {"train/loss": lv, "train/lr": lr, "train/ema_decay": run.ema.decay(step)}
    if grad_norm is not None:
        m["train/grad_norm"] = float(grad_norm)
    run.log(m, done)
    if run.bar is not None:
        run.bar.set_postfix(loss=f"{run.smooth_loss:.4f}", lr=f"{lr:.2e}", refresh=False)


@torch.no_grad()
def validation_loss(policy: DiffusionPolicy, data: WindowDataset, batch_size: int, max_windows: int,
                    amp_ctx: Callable[[], Any]) -> float:
    """Mean denoising loss over (up to ``max_windows``) validation windows, with fixed noise."""
    device = data.index.device
    gen = torch.Generator(device=device).manual_seed(12345)
    n = min(len(data), max_windows)
    ids_all = torch.linspace(0, len(data) - 1, n).round().long().to(device)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        ids = ids_all[i : i + batch_size]
        obs, act = data.batch(ids, policy.n_obs_steps)
        with amp_ctx():
            loss = policy.compute_loss(obs, act, generator=gen, images=data.batch_images(ids, policy.n_obs_steps))
        total += float(loss) * len(ids)
        count += len(ids)
    return total / max(count, 1)


def _validate(run: TrainRun) -> float:
    run.last_val = validation_loss(run.ema_policy, run.data.valid, run.cfg.batch_size, run.cfg.val_max_windows,
                                   run.amp.autocast)
    return run.last_val


def _rollout(run: TrainRun, rollout_fn: RolloutCallback, done: int) -> None:
    try:
        run.rollout_metrics = dict(rollout_fn(run.ema_policy, done) or {})
    except Exception as e:  # noqa: BLE001 - an evaluation failure must not end training
        note(f"rollout evaluation at step {done} failed: {type(e).__name__}: {e}")
        run.rollout_metrics = {"error": f"{type(e).__name__}: {e}"}
    run.log({f"rollout/{k}": v for k, v in run.rollout_metrics.items() if isinstance(v, (int, float))}, done)


def _after_step(run: TrainRun, step: int, loss: torch.Tensor, lr: float, grad_norm: Any,
                rollout_fn: RolloutCallback | None) -> None:
    """Rank 0's bookkeeping after step ``step``: log, progress bar, validation, rollouts."""
    cfg, done = run.cfg, step + 1
    if _due(done, cfg.log_every, cfg.steps):
        _log_step(run, step, loss, lr, grad_norm)
    if run.bar is not None:
        run.bar.update(1)
    if run.data.valid is not None and _due(done, cfg.val_every, cfg.steps):
        run.log({"val/loss": _validate(run)}, done)
        if run.bar is not None:
            run.bar.set_postfix(loss=f"{run.smooth_loss or 0:.4f}", val=f"{run.last_val:.4f}", refresh=False)
    if rollout_fn is not None and _due(done, cfg.rollout.every, cfg.steps):
        _rollout(run, rollout_fn, done)


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).parts[-3:] == ("asd_policy", "training", "__main__.py"):
        argv[0:1] = ["-m", "asd_policy.training"]
    return " ".join(["python"] + argv)


def save(run: TrainRun, step: int) -> None:
    """The EMA checkpoint (with what the run recorded) and the resumable state, on rank 0."""
    if not run.dist.is_main:
        return
    cfg, device, wall = run.cfg, run.device, run.wall_time()
    info = {
        "steps": step,
        "wall_time_s": round(wall, 1),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "world_size": run.dist.world_size,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "amp": run.amp.name,
        "train_loss": run.last_train_loss,
        "val_loss": run.last_val,
        "rollout": run.rollout_metrics,
        "torch": torch.__version__,
        "command": _command(),
        **run.data.info,
    }
    save_policy(run.ema_policy, run.out / CKPT_DIR, training_info=info)
    extra = {"config": {**cfg.to_dict(), "dataset": run.data.info["dataset"]}, "wandb_run_id": run.run_id,
             "wall_time_s": wall, "val_loss": run.last_val}
    save_state(run.state_dir, step, run.networks, run.ema, run.opt, run.gen, run.amp.scaler, extra)


def _close(run: TrainRun) -> None:
    if run.bar is not None:
        run.bar.close()
    for lg in run.loggers:
        with contextlib.suppress(Exception):
            lg.finish()
    finish_distributed(run.dist)


@contextlib.contextmanager
def _stop_on_sigterm(enabled: bool):
    """An event set by SIGTERM (``timeout``, a scheduler's pre-emption): the loop then ends after the
    step in progress and saves it like a last step, instead of the process dying mid-save with a
    checkpoint whose weights and JSON disagree. Single-process runs only (DDP ranks would stop at
    different steps), and only where signal handlers can be set (the main thread)."""
    stop = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _loop(run: TrainRun, rollout_fn: RolloutCallback | None, stop: threading.Event) -> int:
    cfg, main = run.cfg, run.dist.is_main
    final = max(cfg.steps, run.start_step)
    for step in range(run.start_step, cfg.steps):
        loss, lr, grad_norm = _step(run, step)
        if main:
            _after_step(run, step, loss, lr, grad_norm, rollout_fn)
        done = step + 1
        if stop.is_set():
            note(f"SIGTERM: stopping at step {done} of {cfg.steps}; saving it")
            final = done
            break
        if cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0 and done != cfg.steps:
            save(run, done)
    if cfg.steps == 0 and run.data.valid is not None and main:
        _validate(run)
    save(run, final)
    return final


def train(cfg: TrainConfig, rollout_fn: RolloutCallback | None = None, logger: Any = None) -> TrainResult:
    """Train (or resume) a policy as configured; returns where the EMA checkpoint is.

    ``rollout_fn(ema_policy, step) -> {"success_rate": ..., ...}`` is called on rank 0 every
    ``cfg.rollout.every`` steps (and at the end) and its numbers are logged under ``rollout/``
    (:func:`asd_policy.training.rollouts.rollout_callback` makes one that runs the evaluation).
    ``logger`` (an object with ``log(metrics, step)`` and ``finish()``) replaces W&B if given.
    """
    run = setup(cfg, logger)
    try:
        with _stop_on_sigterm(not run.dist.enabled) as stop:
            final = _loop(run, rollout_fn, stop)
    finally:
        _close(run)
    wall = run.wall_time()
    ckpt = run.out / CKPT_DIR
    if run.dist.is_main:
        note(f"{final} steps, train loss {run.last_train_loss}, val loss {run.last_val}, {wall:.0f}s; policy: {ckpt}")
    return TrainResult(run.out, ckpt, final, run.last_train_loss, run.last_val, wall, run.rollout_metrics)
