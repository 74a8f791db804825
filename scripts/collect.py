#!/usr/bin/env python
"""Collect scripted-expert demonstrations in robomimic's hdf5 layout or as a LeRobot v3.0 dataset.

    python scripts/collect.py task=reach_around num_demos=200 seed=0 output=data/reach_around.hdf5
    python scripts/collect.py task=lift num_demos=100 max_attempts=100   # expert success over 100 episodes
    python scripts/collect.py task=reach_around format=lerobot output=data/reach_around   # LeRobot v3.0

hdf5 (the default) writes data/demo_<i>/{obs,next_obs,actions,rewards,dones,states}, env_args,
mask/{train,valid}; format=lerobot a LeRobot v3.0 dataset directory (docs/lerobot-datasets.md).
Prints one summary line (demos kept, expert success rate, steps). Deterministic for a seed.
The settings and their defaults are the fields of asd_policy.data.collect.CollectConfig (registered as
`collect_schema`); configs/collect.yaml picks the default task and the run directory.
"""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from asd_policy.core.config import check_overrides, from_hydra
from asd_policy.data.collect import CollectConfig, collect

ConfigStore.instance().store(name="collect_schema", node=CollectConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="collect")
def main(cfg: DictConfig) -> None:
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # silence PyOpenGL's info line
    try:
        c = from_hydra(cfg)
        summary = collect(
            task=c.task.name,
            num_demos=c.num_demos,
            seed=c.seed,
            output=hydra.utils.to_absolute_path(c.output_path()),
            env_overrides=c.task.env_overrides(),
            max_attempts=c.max_attempts,
            valid_fraction=c.valid_fraction,
            progress=c.progress,
            format=c.format,
            hold_steps=c.hold_steps,
        )
    except ValueError as e:  # a bad setting or output: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(summary.line(), flush=True)


if __name__ == "__main__":
    check_overrides(CollectConfig, sys.argv[1:], Path(__file__).resolve().parents[1] / "configs" / "task")
    main()
