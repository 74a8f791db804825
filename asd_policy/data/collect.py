"""Roll out a task's scripted expert and write the successful episodes in robomimic's layout
(``format="hdf5"``, the default) or as a LeRobot v3.0 dataset (``format="lerobot"``).

Used by ``scripts/collect.py`` (hydra front end over :class:`CollectConfig`); callable directly for tests::

    from asd_policy.data.collect import collect
    summary = collect("reach_around", num_demos=10, seed=0, output="data/ra.hdf5")
    summary = collect("reach_around", num_demos=10, seed=0, output="data/ra", format="lerobot")

Episode ``i`` (attempt number) resets the env with ``seed + i`` and draws the expert's random
choices from ``numpy.random.default_rng([seed, i])``, so a collection is a pure function of
(task, seed, overrides) and every episode can be regenerated on its own.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from asd_envs import get_task, make_env, make_expert
from asd_envs.cameras import STATE_KEY, image_key
from asd_policy.control.tasks import TaskConfig
from asd_policy.core.config import ConfigError, check_choice, coerce_nested
from asd_policy.data.robomimic_export import RobomimicWriter

#: Output formats: robomimic-layout hdf5 (a file) or a LeRobot v3.0 dataset (a directory).
FORMATS = ("hdf5", "lerobot")


@dataclass
class CollectConfig:
    """Every setting of ``scripts/collect.py`` and its default (configs/collect.yaml picks the task)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    num_demos: int = 100
    seed: int = 0
    output: str | None = None  # None -> data/<task>.hdf5 (hdf5) or data/<task> (lerobot, a directory)
    format: str = "hdf5"  # hdf5 (robomimic layout) | lerobot (LeRobot v3.0 dataset, needs pyarrow)
    max_attempts: int | None = None  # episodes to try at most; None -> 2 * num_demos + 10
    valid_fraction: float = 0.1  # share of demos in the validation split (hdf5: mask/valid)
    # steps the expert keeps acting after the first success, recorded too (0: the episode ends there,
    # as in robomimic); the env must not end the episode on success (reach_around:
    # ++task.env_kwargs.terminate_on_success=false). A policy then sees how to stay at the goal.
    hold_steps: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        coerce_nested(self)
        check_choice("format", self.format, FORMATS)
        if isinstance(self.num_demos, bool) or not isinstance(self.num_demos, int) or self.num_demos < 1:
            raise ConfigError(f"num_demos={self.num_demos!r} is not valid; use an integer >= 1")
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError(f"valid_fraction={self.valid_fraction!r} is not valid; use a share in [0, 1)")
        if isinstance(self.hold_steps, bool) or not isinstance(self.hold_steps, int) or self.hold_steps < 0:
            raise ConfigError(f"hold_steps={self.hold_steps!r} is not valid; use an integer >= 0")
        if not self.task.name:
            raise ConfigError("give a task: task=<name> (a configs/task/<name>.yaml)")
        _check_output(self.output_path(), self.format)

    def output_path(self) -> str:
        """``output`` (``~`` expanded), else ``data/<task>.hdf5`` or, for LeRobot, ``data/<task>``
        (``<task>_image`` with cameras, so that images never overwrite a state-only collection)."""
        if self.output:
            return os.path.expanduser(self.output)
        name = f"{self.task.name}_image" if self.task.cameras else str(self.task.name)
        return os.path.join("data", f"{name}.hdf5" if self.format == "hdf5" else name)


def _check_output(output: str, format: str) -> None:
    """The output names a file for hdf5 and a directory for LeRobot (catches a format= left out)."""
    is_hdf5_name = output.endswith((".hdf5", ".h5"))
    if format == "lerobot" and is_hdf5_name:
        raise ConfigError(f"output={output!r} names an hdf5 file, but format=lerobot writes a dataset directory; "
                          f"give a directory (e.g. output={output.rsplit('.', 1)[0]}) or format=hdf5")
    if format == "hdf5" and os.path.isdir(output):
        raise ConfigError(f"output={output!r} is a directory, but format=hdf5 writes a file; give a path ending "
                          f"in .hdf5, or format=lerobot to write a LeRobot dataset there")


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


def _obs_dict(sim, obs) -> dict[str, np.ndarray]:
    """The per-key observation to record: the task's keys, plus the camera frames of a Dict observation."""
    images = {k: v for k, v in obs.items() if k != STATE_KEY} if isinstance(obs, dict) else {}
    return {**sim.get_obs_dict(), **images}


def run_expert_episode(env, expert, seed: int, rng: np.random.Generator, hold_steps: int = 0) -> dict[str, Any]:
    """One expert episode from ``env.reset(seed=seed)``; stops ``hold_steps`` steps after the first
    success (0: the recorded episode ends on the step that solves the task, as in robomimic's
    datasets), when the env ends it, or at the time limit. With cameras, each recorded observation
    holds the frames too."""
    sim = env.unwrapped
    obs, info = env.reset(seed=seed)
    expert.reset(rng=rng)
    # robosuite rebuilds its MJCF at reset: robomimic keeps it per demo (``model_file``)
    model_file = sim.model_xml() if hasattr(sim, "model_xml") else None
    obs_dicts = [_obs_dict(sim, obs)]
    actions, rewards, states = [], [], []
    success, held = False, 0
    step_time = 0.0
    while True:
        states.append(sim.get_state())
        action = expert.act(obs[STATE_KEY] if isinstance(obs, dict) else obs)
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = env.step(action)
        step_time += time.perf_counter() - t0
        obs_dicts.append(_obs_dict(sim, obs))
        actions.append(np.asarray(action, dtype=np.float64))
        rewards.append(float(reward))
        if success:
            held += 1
        success = success or bool(info.get("is_success", False))
        if (success and held >= hold_steps) or terminated or truncated:
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
    format: str = "hdf5",
    hold_steps: int = 0,
) -> CollectSummary:
    """Collect ``num_demos`` successful expert episodes (trying at most ``max_attempts``
    episodes, default ``2 * num_demos + 10``) into ``output`` in ``format`` (see :data:`FORMATS`).
    ``num_demos=100 max_attempts=100`` measures the expert's success rate over exactly 100 seeded episodes.
    ``env_overrides`` with ``cameras`` (``TaskConfig.env_overrides()``) records their frames as well."""
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}")
    check_choice("format", format, FORMATS)
    _check_output(output, format)
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
    cameras = list(overrides.get("cameras") or [])
    with _open_writer(format, output, spec, env_args, valid_fraction, seed, cameras) as w:
        while kept < num_demos and episodes < max_attempts:
            ep = run_expert_episode(env, expert, seed + episodes, np.random.default_rng([seed, episodes]), hold_steps)
            episodes += 1
            step_time += ep["step_time"]
            step_count += len(ep["actions"])
            if ep["success"]:
                successes += 1
                _add_episode(w, ep)
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


def _open_writer(format: str, output: str, spec, env_args: dict, valid_fraction: float, seed: int,
                 cameras: list[str]):
    if format == "hdf5":  # the frames are obs/<camera>_image, as in robomimic's image datasets
        return RobomimicWriter(output, env_args, spec.name, spec.obs_keys, valid_fraction, split_seed=seed)
    from asd_policy.data.lerobot_export import LeRobotWriter  # pyarrow only when asked for

    return LeRobotWriter(output, spec.obs_keys, spec.state_keys, fps=spec.control_hz, task_name=spec.name,
                         env_args=env_args, task_description=spec.description or spec.name, robot_type=spec.name,
                         valid_fraction=valid_fraction, split_seed=seed,
                         image_keys=[image_key(c) for c in cameras])


def _add_episode(writer, ep: dict[str, Any]) -> None:
    if isinstance(writer, RobomimicWriter):
        writer.add_episode(ep["obs"], ep["actions"], ep["rewards"], ep["dones"], ep["states"],
                           model_file=ep["model_file"])
    else:  # LeRobot frames are (observation, action) pairs: no final observation, simulator state or MJCF
        writer.add_episode(ep["obs"][:-1], ep["actions"])
