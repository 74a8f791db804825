#!/usr/bin/env python
"""Train a diffusion policy (hydra front end of asd_policy.training.train).

    python scripts/train.py task=reach_around                        # data/reach_around.hdf5
    python scripts/train.py task=lift dataset=~/lift/ph/low_dim_v15.hdf5 policy=chi
    python scripts/train.py task=reach_around steps=2000 logger=none
    torchrun --standalone --nproc_per_node=4 scripts/train.py task=lift policy=chi   # DDP

Every setting and its default is a field of asd_policy.training.TrainConfig, registered here as
hydra's `train_schema`; configs/train.yaml only picks the task and policy groups and the run
directory. Re-running with the same `out` resumes; `resume=false` starts over. See docs/training.md.
Without hydra installed: python -m asd_policy.training --dataset X.hdf5 --out DIR (same options).
"""
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from asd_policy.core.config import check_overrides
from asd_policy.training import TrainConfig, rollout_callback, train

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
# configs/train.yaml's run directory: <task>_<size>, <task>_image_<size> for a task with cameras (a camera
# run must never resume a state run's train_state, nor overwrite its checkpoint)
OmegaConf.register_new_resolver(
    "run_name", lambda task, task_cameras, cameras, size: f"{task}{'_image' if task_cameras or cameras else ''}_{size}")


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train_cfg = OmegaConf.to_object(cfg)
        train(train_cfg, rollout_fn=rollout_callback(train_cfg))
    except (FileNotFoundError, ValueError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    check_overrides(TrainConfig, sys.argv[1:], Path(__file__).resolve().parents[1] / "configs" / "task")
    main()
