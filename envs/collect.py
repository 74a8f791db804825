"""Roll out a task's scripted expert and write the successful episodes in robomimic's layout.

Used by ``scripts/collect.py`` (hydra front end); callable directly for tests::

    from asd_envs.collect import collect
    summary = collect("reach_around", num_demos=10, seed=0, output="data/ra.hdf5")

Episode ``i`` (attempt number) resets the env with ``seed + i`` and draws the expert's random
choices from ``numpy.random.default_rng([seed, i])``, so a collection is a pure function of
(task, seed, overrides) and every episode can be regenerated on its own.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .dataset import RobomimicWriter
from .registry import get_task, make_env, make_expert


@dataclass
class CollectSummary:
    task: str
    output: str
    demos_kept: int
    episodes: int
    successes: int
    steps_kept: int
    wall_s: float
    env_step_ms: float

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.episodes, 1)

    def line(self) -> str:
        return (
            f"[collect] task={self.task} demos kept={self.demos_kept} "
            f"expert success={self.successes}/{self.episodes} ({100 * self.success_rate:.1f}%) "
            f"steps={self.steps_kept} (mean {self.steps_kept / max(self.demos_kept, 1):.1f}/demo) "
            f"env step={self.env_step_ms:.3f} ms wall={self.wall_s:.1f}s -> {self.output}"
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["success_rate"] = self.success_rate
        return d


def run_expert_episode(env, expert, seed: int, rng: np.random.Generator) -> dict[str, Any]:
    """One expert episode from ``env.reset(seed=seed)``; stops at the first success (the
    recorded episode ends on the step that solves the task, as in robomimic's datasets) or at
    the time limit."""
    sim = env.unwrapped
    obs, info = env.reset(seed=seed)
    expert.reset(rng=rng)
    # robosuite rebuilds its MJCF at reset: robomimic keeps it per demo (``model_file``)
    model_file = sim.model_xml() if hasattr(sim, "model_xml") else None
    obs_dicts = [sim.get_obs_dict()]
    actions, rewards, states = [], [], []
    success = False
    step_time = 0.0
    while True:
        states.append(sim.get_state())
        action = expert.act(obs)
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = env.step(action)
        step_time += time.perf_counter() - t0
        obs_dicts.append(sim.get_obs_dict())
        actions.append(np.asarray(action, dtype=np.float64))
        rewards.append(float(reward))
        success = bool(info.get("is_success", False))
        if success or terminated or truncated:
            break
    T = len(actions)
    dones = np.zeros(T, dtype=np.int64)
    dones[-1] = 1
    return {
        "obs": obs_dicts,
        "actions": np.stack(actions),
        "rewards": np.asarray(rewards),
        "dones": dones,
        "states": np.stack(states),
        "success": success,
        "step_time": step_time,
        "model_file": model_file,
    }


def collect(
    task: str,
    num_demos: int,
    seed: int = 0,
    output: str = "data/demos.hdf5",
    env_overrides: dict | None = None,
    max_attempts: int | None = None,
    valid_fraction: float = 0.1,
    progress: bool = True,
) -> CollectSummary:
    """Collect ``num_demos`` successful expert episodes (trying at most ``max_attempts``
    episodes, default ``2 * num_demos + 10``). ``num_demos=100 max_attempts=100`` measures the
    expert's success rate over exactly 100 seeded episodes."""
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}")
    spec = get_task(task)
    overrides = dict(env_overrides or {})
    overrides.setdefault("render_mode", None)
    env = make_env(task, **overrides)
    sim = env.unwrapped
    expert = make_expert(task, env, rng=np.random.default_rng(seed))
    max_attempts = int(max_attempts) if max_attempts is not None else 2 * num_demos + 10
    env_args = sim.env_meta() if hasattr(sim, "env_meta") else {
        "env_name": task, "type": 2, "env_kwargs": {k: v for k, v in overrides.items() if k != "render_mode"},
    }
    env_args.setdefault("asd_task", task)

    from tqdm import tqdm

    bar = tqdm(total=num_demos, desc=f"collect {task}", unit="demo", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    t_start = time.perf_counter()
    kept = episodes = successes = steps = 0
    step_time, step_count = 0.0, 0
    with RobomimicWriter(output, env_args, task, spec.obs_keys, valid_fraction, split_seed=seed) as w:
        while kept < num_demos and episodes < max_attempts:
            ep = run_expert_episode(env, expert, seed + episodes, np.random.default_rng([seed, episodes]))
            episodes += 1
            step_time += ep["step_time"]
            step_count += len(ep["actions"])
            if ep["success"]:
                successes += 1
                w.add_episode(ep["obs"], ep["actions"], ep["rewards"], ep["dones"], ep["states"],
                              model_file=ep["model_file"])
                kept += 1
                steps += len(ep["actions"])
                bar.update(1)
            bar.set_postfix(success=f"{successes}/{episodes}")
        if kept == 0:
            raise RuntimeError(
                f"the {task} expert succeeded in none of {episodes} episodes; nothing written"
            )
    bar.close()
    env.close()
    return CollectSummary(
        task=task, output=output, demos_kept=kept, episodes=episodes, successes=successes,
        steps_kept=steps, wall_s=time.perf_counter() - t_start,
        env_step_ms=1e3 * step_time / max(step_count, 1),
    )
