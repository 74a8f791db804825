#!/usr/bin/env python
"""Train a diffusion policy (hydra front end of asd_policy.training.train).

    python scripts/train.py task=reach_around                        # data/reach_around.hdf5
    python scripts/train.py task=lift dataset=~/lift/ph/low_dim_v15.hdf5 policy=chi
    python scripts/train.py task=reach_around steps=2000 logger=none
    torchrun --standalone --nproc_per_node=4 scripts/train.py task=lift policy=chi   # DDP

Re-running with the same `out` resumes; `resume=false` starts over. See docs/training.md.
Without hydra installed: python -m asd_policy.training --dataset X.hdf5 --out DIR (same options).
"""
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_train_config(cfg: DictConfig):
    """The TrainConfig described by the composed hydra config."""
    from asd_policy.training import TrainConfig

    c = OmegaConf.to_container(cfg, resolve=True)
    policy = c["policy"]
    task = c.get("task") or {}
    dataset = c.get("dataset")
    if dataset:
        dataset = hydra.utils.to_absolute_path(os.path.expanduser(dataset))
    return TrainConfig(
        dataset=dataset,
        task=task.get("name"),
        out=hydra.utils.to_absolute_path(c["out"]),
        obs_keys=c.get("obs_keys"),
        size=policy["size"],
        n_obs_steps=policy["n_obs_steps"],
        horizon=policy["horizon"],
        n_action_steps=policy["n_action_steps"],
        schedule=policy.get("schedule") or {},
        sampler=policy.get("sampler") or {},
        steps=c["steps"],
        batch_size=c["batch_size"],
        lr=c["lr"],
        weight_decay=c["weight_decay"],
        adam_betas=tuple(c["adam_betas"]),
        warmup_steps=c["warmup_steps"],
        min_lr_ratio=c["min_lr_ratio"],
        grad_clip=c["grad_clip"],
        ema_power=c["ema_power"],
        ema_max_decay=c["ema_max_decay"],
        amp=c["amp"],
        compile=c["compile"],
        seed=c["seed"],
        device=c["device"],
        log_every=c["log_every"],
        val_every=c["val_every"],
        val_max_windows=c["val_max_windows"],
        ckpt_every=c["ckpt_every"],
        rollout_every=c["rollout"]["every"],
        resume=c["resume"],
        logger=c["logger"],
        wandb_project=c["wandb"]["project"],
        wandb_name=c["wandb"]["name"],
        progress=c["progress"],
    )


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from asd_policy.training import make_rollout_callback, train

    tc = to_train_config(cfg)
    if tc.dataset is None:
        tc.dataset = hydra.utils.to_absolute_path(os.path.join("data", f"{tc.task}.hdf5"))
    rollout = None
    if tc.rollout_every > 0:
        r = cfg.rollout
        rollout = make_rollout_callback(tc.task, episodes=int(r.episodes), seed=int(r.seed), method=str(r.method))
    try:
        train(tc, rollout_fn=rollout)
    except (FileNotFoundError, ValueError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
