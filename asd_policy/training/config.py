"""Every training setting and its default, in one nested dataclass that validates itself.

:class:`TrainConfig` is the only place a training default is written: ``scripts/train.py``
registers it with hydra's ConfigStore (``configs/train.yaml`` only overrides it) and
``python -m asd_policy.training`` generates its flags from the same fields
(:func:`asd_policy.core.config.add_arguments`). A bad value raises :class:`~asd_policy.core.config.ConfigError`
(a ``ValueError``) naming the setting and the fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import (
    HELD_OUT_SEED,
    ConfigError,
    WandbConfig,
    check_choice,
    coerce_nested,
    did_you_mean,
    to_dict,
)
from asd_policy.policy.config import DEFAULT_SAMPLER, DEFAULT_SCHEDULE, PolicyConfig
from asd_policy.policy.unet import UNET_SIZES
from asd_policy.sampling.presets import SAMPLER_PRESETS

__all__ = ["PolicySpec", "RolloutConfig", "TrainConfig", "AMP_MODES", "LOGGERS"]

AMP_MODES = ("auto", "bf16", "fp16", "none")
LOGGERS = ("wandb", "none")


def _positive(where: str, names: tuple[str, ...], config: Any, minimum: int = 1) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where}{name}={value!r} is not valid; use an integer >= {minimum}")


def _vision_defaults() -> dict[str, Any]:
    from asd_policy.policy.vision import VisionConfig

    return VisionConfig(backbone="conv").to_dict()


@dataclass
class PolicySpec:
    """The policy to train: U-Net size, horizons, noise schedule and the sampler stored with it."""

    size: str = "small"  # U-Net size: tiny (tests) | small (CPU-trainable) | chi (published, GPU)
    n_obs_steps: int = 2
    horizon: int = 16  # a multiple of 4 for the 3-level U-Net
    n_action_steps: int = 8
    schedule: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULE))  # NoiseSchedule keywords
    sampler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))  # predict_action's default
    # Cameras the policy sees (the dataset's <camera>_image frames); empty: a state-only policy.
    cameras: list[str] = field(default_factory=list)
    # The image encoder: every asd_policy.policy.vision.VisionConfig field, so that each is a plain override
    # (policy.vision.crop_shape=[76,76]); the small conv trunk trains on a CPU.
    vision: dict[str, Any] = field(default_factory=lambda: _vision_defaults())

    def __post_init__(self) -> None:
        self.schedule = dict(self.schedule or {})
        self.sampler = dict(self.sampler or {})
        self.cameras = [str(c) for c in self.cameras or []]
        try:
            from asd_policy.policy.vision import VisionConfig

            self.vision = VisionConfig.from_dict({**_vision_defaults(), **dict(self.vision or {})}).to_dict()
        except ValueError as e:
            raise ConfigError(f"policy.vision: {e}") from None
        if self.size not in UNET_SIZES:
            raise ConfigError(
                f"policy.size={self.size!r} is not a U-Net size{did_you_mean(self.size, UNET_SIZES)}; "
                f"use one of {', '.join(UNET_SIZES)}"
            )
        _positive("policy.", ("n_obs_steps", "horizon", "n_action_steps"), self)
        self.policy_config(obs_dim=1, action_dim=1)  # horizons, schedule and sampler checked as a checkpoint checks them

    def policy_config(self, obs_dim: int, action_dim: int, **extra: Any) -> PolicyConfig:
        """The checkpoint's :class:`PolicyConfig` for data of these dimensions."""
        try:
            return PolicyConfig(
                obs_dim=obs_dim,
                action_dim=action_dim,
                n_obs_steps=self.n_obs_steps,
                horizon=self.horizon,
                n_action_steps=self.n_action_steps,
                unet={**UNET_SIZES[self.size], "size": self.size},
                schedule=self.schedule,
                sampler=self.sampler,
                **extra,
            )
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"policy: {e}") from None


@dataclass
class RolloutConfig:
    """Success rate of the EMA policy in the task's env during training (``every=0``: off)."""

    every: int = 0  # steps between evaluations (and one at the end)
    episodes: int = 10
    seed: int = HELD_OUT_SEED  # env seed of the first episode: starts no demonstration used
    method: str = "ddpm"  # a sampler preset name (asd_policy.sampling.presets.SAMPLER_PRESETS)

    def __post_init__(self) -> None:
        _positive("rollout.", ("every",), self, minimum=0)
        _positive("rollout.", ("episodes",), self)
        check_choice("rollout.method", self.method, SAMPLER_PRESETS)


@dataclass
class TrainConfig:
    """All training settings (defaults follow diffusion_policy's low-dim U-Net recipe)."""

    dataset: str | None = None  # robomimic hdf5 or LeRobot v3.0 dataset dir; None -> data/<task.name>.hdf5
    out: str | None = None  # run directory; None -> runs/train/<task.name>_<policy.size>
    obs_keys: list[str] | None = None  # None -> the file's keys (a camera policy: the task's own state_keys)
    task: TaskConfig = field(default_factory=TaskConfig)  # names the task in the checkpoint; rollouts run in it
    policy: PolicySpec = field(default_factory=PolicySpec)
    # a checkpoint whose weights start the run (fine-tuning on more or other data): its networks must
    # be the ones this config builds; normalisers, optimiser and schedule are this run's. None: random init
    init_from: str | None = None
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
    ckpt_every: int = 1000  # steps between checkpoint + resumable state saves; 0: only at the end
    resume: bool = True  # an existing out/train_state is resumed; False starts over
    progress: bool = True
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    logger: str = "wandb"  # wandb (offline unless logged in) | none
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        coerce_nested(self)
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if len(self.adam_betas) != 2:
            raise ConfigError(f"adam_betas={list(self.adam_betas)} is not valid; give two numbers, e.g. [0.95, 0.999]")
        if self.obs_keys is not None:
            self.obs_keys = [str(k) for k in self.obs_keys]
        if not self.policy.cameras and self.task.cameras:  # task=<task>_image trains a camera policy on its cameras
            self.policy.cameras = list(self.task.cameras)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("logger", self.logger, LOGGERS)
        _positive("", ("steps", "warmup_steps", "val_every", "ckpt_every"), self, minimum=0)
        _positive("", ("batch_size", "log_every", "val_max_windows"), self)
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} is not valid; use a learning rate > 0, e.g. lr=1e-4")

    def dataset_path(self) -> str:
        """The demonstrations: ``dataset`` (``~`` expanded; an hdf5 file or a LeRobot dataset directory), else
        ``data/<task.name>.hdf5`` (``data/<task.name>_image.hdf5`` with cameras, where the collector writes them)."""
        if self.dataset:
            return os.path.expanduser(self.dataset)
        if self.task.name:
            return os.path.join("data", f"{self.task.name}{'_image' if self.policy.cameras else ''}.hdf5")
        raise ConfigError("give a dataset (dataset=path/to/demos.hdf5) or a task (task=<name>, reads data/<task>.hdf5)")

    def run_dir(self) -> str:
        """The run directory: ``out``, else ``runs/train/<task.name>_<policy.size>`` (the dataset's name without a
        task; ``<task.name>_image_<policy.size>`` for a camera policy, apart from the state runs)."""
        if self.out:
            return os.path.expanduser(self.out)
        name = self.task.name or (Path(self.dataset).stem if self.dataset else "run")
        return os.path.join("runs", "train", f"{name}{'_image' if self.policy.cameras else ''}_{self.policy.size}")

    def to_dict(self) -> dict:
        return to_dict(self)
