#!/usr/bin/env python
"""Collect scripted-expert demonstrations in robomimic's hdf5 layout.

    python scripts/collect.py task=reach_around num_demos=200 seed=0 output=data/reach_around.hdf5
    python scripts/collect.py task=lift num_demos=100 max_attempts=100   # expert success over 100 episodes

Writes data/demo_<i>/{obs,next_obs,actions,rewards,dones,states}, env_args, mask/{train,valid};
prints one summary line (demos kept, expert success rate, steps). Deterministic for a seed.
"""
import logging

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../configs", config_name="collect")
def main(cfg: DictConfig) -> None:
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # silence PyOpenGL's info line
    from asd_envs.collect import collect

    env_kwargs = cfg.task.get("env_kwargs", None)
    env_kwargs = OmegaConf.to_container(env_kwargs, resolve=True) if env_kwargs is not None else {}
    output = hydra.utils.to_absolute_path(cfg.output)
    summary = collect(
        task=cfg.task.name,
        num_demos=int(cfg.num_demos),
        seed=int(cfg.seed),
        output=output,
        env_overrides=env_kwargs,
        max_attempts=cfg.max_attempts,
        valid_fraction=float(cfg.valid_fraction),
        progress=bool(cfg.progress),
    )
    print(summary.line(), flush=True)


if __name__ == "__main__":
    main()
