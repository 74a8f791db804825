"""Training a diffusion policy from a robomimic-format demonstration file.

Plain entry point (needs only torch, numpy, h5py, safetensors and tqdm)::

    python -m asd_policy.training --dataset data/reach_around.hdf5 --out runs/reach_around --steps 20000
    torchrun --nproc_per_node=4 -m asd_policy.training --dataset ... --out ...   # DDP

The hydra front end (``scripts/train.py task=<task>``) builds the same :class:`TrainConfig` and
calls the same :func:`train`; hydra, wandb, gymnasium and the task package are imported only when used.

Modules: ``config`` (TrainConfig and its parts: every default), ``run`` (data, policy, optimiser,
resume, loggers assembled into a TrainRun), ``loop`` (train: steps, logging, validation, saves),
``windows`` (training windows, epoch batch order), ``optim`` (LR schedule, EMA, mixed precision),
``state`` (exact resume), ``distributed`` (torchrun/DDP), ``loggers`` (metrics.jsonl, W&B),
``rollouts`` (the training-time evaluation), ``cli`` (the plain command line).
"""
from asd_policy.training.cli import main
from asd_policy.training.config import PolicySpec, RolloutConfig, TrainConfig
from asd_policy.training.loop import RolloutCallback, TrainResult, train
from asd_policy.training.optim import EMA, cosine_lr
from asd_policy.training.rollouts import make_rollout_callback, rollout_callback
from asd_policy.training.windows import EpochBatches, WindowDataset

__all__ = [
    "TrainConfig",
    "PolicySpec",
    "RolloutConfig",
    "TrainResult",
    "RolloutCallback",
    "WindowDataset",
    "EpochBatches",
    "EMA",
    "cosine_lr",
    "train",
    "make_rollout_callback",
    "rollout_callback",
    "main",
]
