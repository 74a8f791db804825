"""The training-time rollout: the evaluation runner on the EMA policy, every ``rollout.every`` steps.

Each evaluation runs ``rollout.episodes`` episodes of the task from env seed ``rollout.seed`` (the
held-out starts every evaluation uses) with the sampler preset ``rollout.method``, and writes its
results under ``out/rollouts/step_<step>/``. The evaluation (gymnasium, the task package) is
imported only when the first rollout runs.
"""
from __future__ import annotations

from pathlib import Path

from asd_policy.core.config import ConfigError
from asd_policy.policy.diffusion_policy import DiffusionPolicy
from asd_policy.training.config import TrainConfig
from asd_policy.training.loop import RolloutCallback

__all__ = ["make_rollout_callback", "rollout_callback"]


def make_rollout_callback(cfg: TrainConfig) -> RolloutCallback:
    """A callback measuring the success rate of the policy it is given, as ``cfg.rollout`` says."""
    if not cfg.task.name:
        raise ConfigError(f"rollout.every={cfg.rollout.every} needs task.name (the env to roll out in); "
                          f"set task=<name> or rollout.every=0")
    rollout, task, out = cfg.rollout, cfg.task, Path(cfg.run_dir())

    def callback(policy: DiffusionPolicy, step: int) -> dict:
        from asd_policy.evaluation import EvalConfig, evaluate

        eval_cfg = EvalConfig(task=task, samplers=[rollout.method], episodes=rollout.episodes, seed=rollout.seed,
                              logger="none", progress=False, warmup=False)
        results = evaluate(eval_cfg, policy=policy, out_dir=out / "rollouts" / f"step_{step:06d}", verbose=False)
        return {"success_rate": float(results["samplers"][rollout.method]["success_rate"]),
                "episodes": rollout.episodes}

    return callback


def rollout_callback(cfg: TrainConfig) -> RolloutCallback | None:
    """The callback :func:`~asd_policy.training.loop.train` needs for ``cfg``: None when rollouts are off."""
    return make_rollout_callback(cfg) if cfg.rollout.every > 0 else None
