"""Training a diffusion policy from a robomimic-format demonstration file.

Plain entry point (needs only torch, numpy, h5py, safetensors; tqdm for the bar)::

    python -m asd_policy.training --dataset data/reach_around.hdf5 --out runs/reach_around --steps 20000
    torchrun --nproc_per_node=4 -m asd_policy.training --dataset ... --out ...   # DDP

The hydra front end (``scripts/train.py task=<task>``) builds a :class:`TrainConfig` and calls the
same :func:`train`.  hydra, wandb, gymnasium and the task package are imported only when used.

The run directory ``out`` holds::

    out/checkpoint/    the EMA policy (policy.safetensors + policy.json): load_policy(out/"checkpoint")
    out/train_state/   everything needed to resume (weights, EMA, optimiser, RNG; safetensors + JSON)
    out/metrics.jsonl  every logged metric, one JSON object per line
    out/wandb/         the W&B run (offline unless you are logged in), when logger="wandb"

Re-running with the same ``out`` resumes from ``out/train_state`` (``resume=False`` starts over).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from asd_policy.checkpoint import save_policy
from asd_policy.normalizer import MinMaxNormalizer
from asd_policy.policy import DiffusionPolicy, build_policy

__all__ = [
    "TrainConfig",
    "TrainResult",
    "WindowDataset",
    "EMA",
    "train",
    "lr_at",
    "make_rollout_callback",
    "main",
]

RolloutCallback = Callable[[DiffusionPolicy, int], dict]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """All training settings (defaults follow diffusion_policy's low-dim U-Net recipe)."""

    dataset: str | None = None  # robomimic-format hdf5; default data/<task>.hdf5
    task: str | None = None  # task name (for the checkpoint, the default dataset and rollouts)
    out: str = "runs/train"
    obs_keys: list[str] | None = None  # default: the file's / task's keys
    # policy
    size: str = "small"  # U-Net size: tiny | small | chi
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    schedule: dict = field(default_factory=dict)  # NoiseSchedule keywords (default: DDPM-100 cosine)
    sampler: dict = field(default_factory=dict)  # default sampler stored in the checkpoint
    # optimisation
    steps: int = 20000  # gradient steps
    batch_size: int = 256  # global (split over DDP ranks)
    lr: float = 1e-4
    weight_decay: float = 1e-6
    adam_betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max gradient norm; <= 0 turns clipping off
    ema_power: float = 0.75  # EMA decay warm-up 1 - (1 + step) ** -power, as diffusion_policy
    ema_max_decay: float = 0.9999
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else off) | bf16 | fp16 | none
    compile: bool = False  # torch.compile the network (GPU)
    # bookkeeping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50
    val_every: int = 1000  # steps; 0 turns validation off
    val_max_windows: int = 4096
    ckpt_every: int = 1000  # steps between checkpoint + resumable state saves
    rollout_every: int = 0  # steps between rollout-success evaluations (needs a callback)
    resume: bool = True
    logger: str = "wandb"  # wandb | none
    wandb_project: str = "asd-policy"
    wandb_name: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if self.obs_keys is not None:
            self.obs_keys = [str(k) for k in self.obs_keys]
        self.schedule = dict(self.schedule or {})
        self.sampler = dict(self.sampler or {})
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp={self.amp!r}; use auto, bf16, fp16 or none")
        if self.logger not in ("wandb", "none"):
            raise ValueError(f"logger={self.logger!r}; use wandb or none")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps must be >= 0 and batch_size >= 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    wall_time_s: float
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


class WindowDataset:
    """All fixed-length windows of a set of episodes, held as tensors (low-dim data is small).

    As diffusion_policy's ``SequenceSampler``: each window covers ``horizon`` steps; windows may
    start ``pad_before = n_obs_steps - 1`` steps before an episode and end ``pad_after =
    n_action_steps - 1`` steps after it, the missing steps repeating the first / last step.
    """

    def __init__(self, episodes, horizon: int, pad_before: int, pad_after: int):
        episodes = [e for e in episodes if len(e) > 0]
        if not episodes:
            raise ValueError("no (non-empty) episodes to make training windows from")
        self.obs = torch.from_numpy(np.concatenate([e.obs for e in episodes]).astype(np.float32))
        self.actions = torch.from_numpy(np.concatenate([e.actions for e in episodes]).astype(np.float32))
        rows, offset = [], 0
        ar = np.arange(horizon)
        for e in episodes:
            T = len(e)
            starts = np.arange(-pad_before, T - horizon + pad_after + 1)
            if len(starts):
                rows.append(np.clip(starts[:, None] + ar[None, :], 0, T - 1) + offset)
            offset += T
        if not rows:
            raise ValueError(
                f"episodes are too short for horizon={horizon} with padding {pad_before}/{pad_after}"
            )
        self.index = torch.from_numpy(np.concatenate(rows).astype(np.int64))  # [N, horizon] rows
        self.horizon = horizon

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device) -> "WindowDataset":
        self.obs, self.actions, self.index = self.obs.to(device), self.actions.to(device), self.index.to(device)
        return self

    def batch(self, ids: Tensor, n_obs_steps: int) -> tuple[Tensor, Tensor]:
        """(obs [B, n_obs_steps, obs_dim], actions [B, horizon, action_dim]) for window ids."""
        rows = self.index[ids]
        return self.obs[rows[:, :n_obs_steps]], self.actions[rows]


class EpochSampler:
    """Window ids in shuffled epochs; rank r of w takes every w-th id; a pure function of step.

    Batch ``k`` is determined by (seed, k) alone, so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.b, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.per_epoch = max(1, n // (batch_size * world_size))  # drop the last partial batch
        self._epoch, self._perm = -1, None

    def ids(self, step: int) -> Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            if len(perm) < self.b * self.world:  # tiny datasets: repeat to fill one batch
                perm = perm.repeat(math.ceil(self.b * self.world / len(perm)))
            self._epoch, self._perm = epoch, perm
        start = k * self.b * self.world + self.rank * self.b
        return self._perm[start : start + self.b]


# ---------------------------------------------------------------------------------------------
# optimisation pieces
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over warmup_steps, then cosine decay to lr * min_lr_ratio."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    rest = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / rest)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's parameters (diffusion_policy's EMAModel schedule)."""

    def __init__(self, model: torch.nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        import copy

        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay = power, max_decay

    def decay(self, step: int) -> float:
        return float(min(self.max_decay, max(0.0, 1 - (1 + step) ** -self.power)))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay(step)
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, [s.to(e.dtype) for s, e in zip(src_p, ema_p)], 1.0 - d)
        for eb, sb in zip(self.model.buffers(), model.buffers()):
            eb.copy_(sb)


# ---------------------------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device_pref!r} but CUDA is not available; use device=cpu")
    if device_pref == "cuda":
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    else:
        device = torch.device(device_pref)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, local, world), device


# ---------------------------------------------------------------------------------------------
# loggers
# ---------------------------------------------------------------------------------------------


class _JsonlLogger:
    def __init__(self, path: Path):
        self.f = open(path, "a")

    def log(self, metrics: dict, step: int) -> None:
        self.f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.f.flush()

    def finish(self) -> None:
        self.f.close()


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class _WandbLogger:
    """W&B: offline unless WANDB_MODE says otherwise or the user is logged in."""

    def __init__(self, cfg: TrainConfig, out: Path, run_id: str | None):
        import wandb  # lazy: optional at run time

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.wandb_project,
            name=cfg.wandb_name or out.name,
            dir=str(out),
            config=cfg.to_dict(),
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            job_type="train",
        )
        self.run_id = self.run.id

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------------------------------------
# resumable state: safetensors + JSON, no pickle
# ---------------------------------------------------------------------------------------------

STATE_DIR = "train_state"
CKPT_DIR = "checkpoint"


def _save_state(
    path: Path,
    step: int,
    model: torch.nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    scaler: Any,
    extra: dict,
) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in ema.model.state_dict().items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"opt.{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = val
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.gen"] = gen.get_state().cpu()
    if torch.cuda.is_available() and gen.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(gen.device)
    meta = {
        "step": step,
        "param_groups": sd["param_groups"],
        "opt_scalars": scalars,
        "scaler": scaler.state_dict() if scaler is not None else None,
        **extra,
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, path / "state.safetensors")
    (path / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(path / "state.json.tmp", path / "state.json")


def _load_state(
    path: Path,
    model: torch.nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    scaler: Any,
) -> dict:
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as e:  # noqa: BLE001 - corrupt state: say where and what to do
        raise ValueError(
            f"cannot resume from {str(path)!r} ({type(e).__name__}: {e}); delete that directory or pass "
            f"resume=false to start over"
        ) from None
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as e:
        raise ValueError(
            f"the state in {str(path)!r} was saved for a different network ({str(e).splitlines()[0]}); use a new "
            f"out directory or resume=false"
        ) from None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta["opt_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    gen.set_state(tensors["rng.gen"])
    if "rng.cuda" in tensors and gen.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], gen.device)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def _resolve_dataset(cfg: TrainConfig) -> str:
    if cfg.dataset:
        return cfg.dataset
    if cfg.task:
        return os.path.join("data", f"{cfg.task}.hdf5")
    raise ValueError("give a dataset (dataset=path/to/demos.hdf5) or a task (task=<name>, reads data/<task>.hdf5)")


@torch.no_grad()
def _validation_loss(policy: DiffusionPolicy, data: WindowDataset, cfg: TrainConfig, device, amp_ctx) -> float:
    """Mean denoising loss over (up to val_max_windows) validation windows, with fixed noise."""
    gen = torch.Generator(device=device).manual_seed(12345)
    n = min(len(data), cfg.val_max_windows)
    ids_all = torch.linspace(0, len(data) - 1, n).round().long().to(device)
    total, count = 0.0, 0
    for i in range(0, n, cfg.batch_size):
        ids = ids_all[i : i + cfg.batch_size]
        obs, act = data.batch(ids, policy.n_obs_steps)
        with amp_ctx():
            loss = policy.compute_loss(obs, act, generator=gen)
        total += float(loss) * len(ids)
        count += len(ids)
    return total / max(count, 1)


def train(
    cfg: TrainConfig,
    rollout_fn: RolloutCallback | None = None,
    logger: Any = None,
) -> TrainResult:
    """Train (or resume) a policy as configured; returns where the EMA checkpoint is.

    ``rollout_fn(ema_policy, step) -> {"success_rate": ..., ...}`` is called on rank 0 every
    ``cfg.rollout_every`` steps (and at the end) and its numbers are logged under ``rollout/``.
    ``logger`` (an object with ``log(metrics, step)`` and ``finish()``) replaces W&B if given.
    """
    from asd_policy.data import load_demonstrations

    t_start = time.perf_counter()
    dist, device = _init_distributed(cfg.device)
    torch.manual_seed(cfg.seed + dist.rank)
    out = Path(cfg.out)
    state_dir = out / STATE_DIR

    # ---- data
    dataset_path = _resolve_dataset(cfg)
    demos = load_demonstrations(dataset_path, obs_keys=cfg.obs_keys)
    task_name = cfg.task or demos.task_name
    train_eps = demos.train_episodes or demos.episodes
    valid_eps = demos.valid_episodes
    obs_norm = MinMaxNormalizer.fit(np.concatenate([e.obs for e in train_eps]))
    act_norm = MinMaxNormalizer.fit(np.concatenate([e.actions for e in train_eps]))
    pad = dict(horizon=cfg.horizon, pad_before=cfg.n_obs_steps - 1, pad_after=cfg.n_action_steps - 1)
    train_data = WindowDataset(train_eps, **pad).to(device)
    valid_data = WindowDataset(valid_eps, **pad).to(device) if valid_eps else None

    # ---- policy, EMA, optimiser
    policy = build_policy(
        demos.obs_dim,
        demos.action_dim,
        size=cfg.size,
        n_obs_steps=cfg.n_obs_steps,
        horizon=cfg.horizon,
        n_action_steps=cfg.n_action_steps,
        schedule=cfg.schedule,
        sampler=cfg.sampler,
        task_name=task_name,
        obs_keys=list(demos.obs_keys),
        obs_normalizer=obs_norm,
        action_normalizer=act_norm,
    ).to(device)
    policy.model.train()
    ema = EMA(policy.model, cfg.ema_power, cfg.ema_max_decay)
    ema_policy = DiffusionPolicy(policy.config, obs_norm, act_norm).to(device)
    ema_policy.model = ema.model
    opt = torch.optim.AdamW(
        policy.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
    )

    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if amp_dtype is not None and device.type != "cuda" and amp == "fp16":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=none on CPU")
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    def amp_ctx():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + dist.rank)
    start_step, run_id, best = 0, None, {}
    if cfg.resume and (state_dir / "state.json").is_file():
        meta = _load_state(state_dir, policy.model, ema, opt, gen, scaler)
        start_step, run_id = int(meta["step"]), meta.get("wandb_run_id")
        saved = meta.get("config", {})
        if saved.get("dataset") not in (None, dataset_path) and dist.is_main:
            print(f"[train] note: resuming a run that used dataset {saved['dataset']!r}", file=sys.stderr)
        old_cfg = dataclasses.replace(
            cfg, **{k: saved[k] for k in ("steps", "lr", "warmup_steps", "min_lr_ratio") if k in saved}
        )
        old_lr, new_lr = lr_at(start_step, old_cfg), lr_at(start_step, cfg)
        if old_lr != new_lr and dist.is_main:
            # Extending a finished run is a warm restart, not a continuation: say so, since the
            # learning rate jumps back up from where the old schedule had decayed it.
            print(
                f"[train] note: resuming at step {start_step} with a different schedule (steps {old_cfg.steps} -> "
                f"{cfg.steps}); the learning rate goes from {old_lr:.3g} to {new_lr:.3g} (a warm restart of the cosine)",
                file=sys.stderr,
            )

    net: torch.nn.Module = policy.model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # after DDP, as PyTorch recommends

    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes {dist.world_size}")
    sampler = EpochSampler(len(train_data), cfg.batch_size // dist.world_size, cfg.seed, dist.rank, dist.world_size)

    # ---- logging (rank 0)
    loggers: list[Any] = []
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        loggers.append(_JsonlLogger(out / "metrics.jsonl"))
        if logger is not None:
            loggers.append(logger)
        elif cfg.logger == "wandb":
            wl = _WandbLogger(cfg, out, run_id)
            run_id = wl.run_id
            loggers.append(wl)

    def log(metrics: dict, step: int) -> None:
        for lg in loggers:
            lg.log(metrics, step)

    def data_info() -> dict:
        return {
            "dataset": os.path.abspath(dataset_path),
            "num_train_demos": len(train_eps),
            "num_valid_demos": len(valid_eps),
            "num_train_windows": len(train_data),
            "env_args": demos.env_args,
        }

    last_train_loss: float | None = None
    last_val: float | None = None
    rollout_metrics: dict = {}
    prior_wall = 0.0
    if start_step and (state_dir / "state.json").is_file():
        prior = json.loads((state_dir / "state.json").read_text())
        prior_wall = float(prior.get("wall_time_s", 0.0))
        last_val = prior.get("val_loss")

    def save(step: int) -> None:
        if not dist.is_main:
            return
        wall = prior_wall + time.perf_counter() - t_start
        info = {
            "steps": step,
            "wall_time_s": round(wall, 1),
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "world_size": dist.world_size,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "amp": amp,
            "train_loss": last_train_loss,
            "val_loss": last_val,
            "rollout": rollout_metrics,
            "torch": torch.__version__,
            "command": " ".join(["python"] + sys.argv),
            **data_info(),
        }
        save_policy(ema_policy, out / CKPT_DIR, training_info=info)
        _save_state(
            state_dir,
            step,
            policy.model,
            ema,
            opt,
            gen,
            scaler,
            {"config": {**cfg.to_dict(), "dataset": dataset_path}, "wandb_run_id": run_id, "wall_time_s": wall,
             "val_loss": last_val},
        )

    bar = None
    if dist.is_main and cfg.progress and start_step < cfg.steps:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start_step, desc="train", dynamic_ncols=True)
        except ImportError:
            bar = None

    smooth = None
    final = start_step
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            obs, act = train_data.batch(sampler.ids(step).to(device), cfg.n_obs_steps)
            with amp_ctx():
                loss = policy.compute_loss(obs, act, model=net, generator=gen)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            ema.update(policy.model, step)
            done = step + 1

            if dist.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
                lv = float(loss.detach())  # one host sync per log_every steps
                if not math.isfinite(lv):
                    raise FloatingPointError(
                        f"training loss is {lv} at step {done}; lower lr (now {cfg.lr}) or use amp=none"
                    )
                last_train_loss = lv
                smooth = lv if smooth is None else 0.9 * smooth + 0.1 * lv
                m = {"train/loss": lv, "train/lr": lr, "train/ema_decay": ema.decay(step)}
                if grad_norm is not None:
                    m["train/grad_norm"] = float(grad_norm)
                log(m, done)
                if bar is not None:
                    bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{lr:.2e}", refresh=False)
            if bar is not None:
                bar.update(1)

            if dist.is_main and valid_data is not None and cfg.val_every > 0 and (
                done % cfg.val_every == 0 or done == cfg.steps
            ):
                last_val = _validation_loss(ema_policy, valid_data, cfg, device, amp_ctx)
                log({"val/loss": last_val}, done)
                if bar is not None:
                    bar.set_postfix(loss=f"{smooth or 0:.4f}", val=f"{last_val:.4f}", refresh=False)

            if dist.is_main and rollout_fn is not None and cfg.rollout_every > 0 and (
                done % cfg.rollout_every == 0 or done == cfg.steps
            ):
                try:
                    rollout_metrics = dict(rollout_fn(ema_policy, done) or {})
                except Exception as e:  # noqa: BLE001 - an evaluation failure must not end training
                    print(f"[train] rollout evaluation at step {done} failed: {type(e).__name__}: {e}", file=sys.stderr)
                    rollout_metrics = {"error": f"{type(e).__name__}: {e}"}
                log({f"rollout/{k}": v for k, v in rollout_metrics.items() if isinstance(v, (int, float))}, done)

            if cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0 and done != cfg.steps:
                save(done)
        final = max(cfg.steps, start_step)
        if cfg.steps == 0 and valid_data is not None and dist.is_main:
            last_val = _validation_loss(ema_policy, valid_data, cfg, device, amp_ctx)
        save(final)
    finally:
        if bar is not None:
            bar.close()
        for lg in loggers:
            with contextlib.suppress(Exception):
                lg.finish()
        if dist.enabled:
            import torch.distributed as tdist

            with contextlib.suppress(Exception):
                tdist.barrier()
            tdist.destroy_process_group()

    wall = prior_wall + time.perf_counter() - t_start
    if dist.is_main:
        print(
            f"[train] {final} steps, train loss {last_train_loss}, val loss {last_val}, "
            f"{wall:.0f}s; policy: {out / CKPT_DIR}",
            file=sys.stderr,
        )
    return TrainResult(out, out / CKPT_DIR, final, last_train_loss, last_val, wall, rollout_metrics)


# ---------------------------------------------------------------------------------------------
# rollout callback (optional; needs gymnasium + the task package)
# ---------------------------------------------------------------------------------------------


def make_rollout_callback(
    task: str, episodes: int = 10, seed: int = 100_000, method: str = "ddpm", **sampler_kwargs
) -> RolloutCallback:
    """A callback measuring success of the EMA policy on ``episodes`` seeded episodes of ``task``.

    Seeds start at ``seed`` (far from the collector's) so they do not repeat training episodes.
    """

    def callback(policy: DiffusionPolicy, step: int) -> dict:
        import asd_envs
        from asd_policy.rollout import SamplerSpec, rollout_episodes

        envs = [asd_envs.make_env(task) for _ in range(episodes)]
        try:
            results = rollout_episodes(
                envs,
                policy,
                seeds=[seed + i for i in range(episodes)],
                sampler=SamplerSpec(method, method, sampler_kwargs),
                generator=torch.Generator(device=policy.device).manual_seed(seed),
            )
        finally:
            for e in envs:
                e.close()
        succ = [bool(r.success) for r in results]
        return {"success_rate": float(np.mean(succ)), "episodes": len(succ)}

    return callback


# ---------------------------------------------------------------------------------------------
# plain command line
# ---------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m asd_policy.training",
        description="Train a diffusion policy from a robomimic-format hdf5 file (no hydra needed).",
    )
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name in ("schedule", "sampler"):
            p.add_argument(name, type=json.loads, default=None, help=f"JSON object (default {default})")
        elif f.name == "obs_keys":
            p.add_argument(name, nargs="+", default=None, help="observation keys in order (default: the file's)")
        elif f.name == "adam_betas":
            p.add_argument(name, type=float, nargs=2, default=None)
        elif isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=None)
        else:
            typ = {int: int, float: float}.get(type(default), str)
            p.add_argument(name, type=typ, default=None, help=f"(default {default})")
    p.add_argument("--rollout-episodes", type=int, default=10, help="episodes per rollout evaluation")
    args = p.parse_args(argv)
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    return TrainConfig(**kwargs), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = _parse_args(argv)
    rollout = None
    if cfg.rollout_every > 0:
        if not cfg.task:
            raise SystemExit("--rollout-every needs --task (the env to roll out in)")
        rollout = make_rollout_callback(cfg.task, episodes=args.rollout_episodes)
    train(cfg, rollout_fn=rollout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
