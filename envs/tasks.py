"""Built-in task specifications (see docs/tasks.md)."""
from __future__ import annotations

from . import reach_around as _ra
from .registry import TaskSpec, register_task

register_task(
    TaskSpec(
        name="reach_around",
        obs_keys=_ra.OBS_KEYS,
        obs_key_dims=_ra.OBS_KEY_DIMS,
        action_dim=2,
        control_hz=_ra.CONTROL_HZ,
        max_episode_steps=_ra.MAX_EPISODE_STEPS,
        family="mujoco",
        description="own planar task: reach a goal behind a wall, passing it on the left or right",
        entry_point="asd_envs.reach_around:make",
        expert_entry_point="asd_envs.reach_around:ReachAroundExpert",
    )
)
