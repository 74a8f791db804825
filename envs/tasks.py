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
        state_keys=("agent_pos", "agent_vel"),
        cameras=tuple(_ra.ReachAroundEnv.CAMERAS),
    )
)

# robomimic tasks (robosuite 1.5.2 through robomimic 0.3.0's env utilities; see robomimic_tasks.py)
from . import robomimic_tasks as _rm  # noqa: E402

for _name, _expert, _desc in [
    ("lift", "LiftExpert", "robomimic Lift: pick up the cube"),
    ("can", "CanExpert", "robomimic PickPlaceCan: put the can into its bin compartment"),
    ("square", "SquareExpert", "robomimic NutAssemblySquare: put the square nut on its peg"),
]:
    _env_name, _object_dim, _horizon = _rm.ROBOMIMIC_TASKS[_name]
    register_task(
        TaskSpec(
            name=_name,
            obs_keys=_rm.OBS_KEYS,
            obs_key_dims=(3, 4, 2, _object_dim),
            action_dim=7,
            control_hz=_rm.CONTROL_HZ,
            max_episode_steps=_horizon,
            family="robomimic",
            description=_desc,
            entry_point="asd_envs.robomimic_tasks:make",
            expert_entry_point=f"asd_envs.robomimic_experts:{_expert}",
            state_keys=_rm.LOW_DIM_KEYS,
            cameras=_rm.CAMERAS[_name],
        )
    )

# gymnasium-robotics Fetch tasks (see fetch_tasks.py)
from . import fetch_tasks as _ft  # noqa: E402

for _name, _expert, _desc in [
    ("fetch_push", "FetchPushExpert", "gymnasium-robotics FetchPush-v4: push the block to the goal"),
    ("fetch_pick_place", "FetchPickPlaceExpert", "gymnasium-robotics FetchPickAndPlace-v4: move the block to the goal, often in the air"),
]:
    register_task(
        TaskSpec(
            name=_name,
            obs_keys=_ft.OBS_KEYS,
            obs_key_dims=_ft.OBS_KEY_DIMS,
            action_dim=4,
            control_hz=_ft.CONTROL_HZ,
            max_episode_steps=_ft.MAX_EPISODE_STEPS,
            family="gymnasium_robotics",
            description=_desc,
            entry_point="asd_envs.fetch_tasks:make",
            expert_entry_point=f"asd_envs.fetch_tasks:{_expert}",
            state_keys=("observation",),  # gripper and block; the goals are the environment state
            cameras=tuple(_ft.CAMERAS),
        )
    )
