"""The plain command line (no hydra): ``python -m asd_policy.training --dataset X.hdf5 --out DIR``.

Its flags are generated from :class:`~asd_policy.training.config.TrainConfig`
(:func:`asd_policy.core.config.add_arguments`): ``--steps``, ``--batch-size``, ``--size`` (=
``--policy-size``), ``--task`` (= ``--task-name``), ``--rollout-every``, ``--obs-keys a b``, ...;
``python -m asd_policy.training --help`` lists them all.
"""
from __future__ import annotations

import argparse
import sys

from asd_policy.core.config import ConfigError, add_arguments, from_arguments
from asd_policy.training.config import TrainConfig
from asd_policy.training.loop import train
from asd_policy.training.rollouts import rollout_callback

__all__ = ["parser", "parse_config", "main"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asd_policy.training",
        description="Train a diffusion policy from a robomimic-format hdf5 file or a LeRobot v3.0 dataset directory "
        "(no hydra needed). Re-running "
        "with the same --out resumes (--no-resume starts over).",
    )
    add_arguments(p, TrainConfig, aliases={"task": "task.name"})
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` the flags describe (argparse's exit 2 for an unknown flag or a bad value)."""
    p = parser()
    args = p.parse_args(argv)
    try:
        return from_arguments(TrainConfig, args)
    except ConfigError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    try:
        train(cfg, rollout_fn=rollout_callback(cfg))
    except (FileNotFoundError, ValueError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
