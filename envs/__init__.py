"""Tasks behind one gymnasium interface (imported as `asd_envs`).

    import asd_envs
    env = asd_envs.make_env("reach_around")            # gymnasium.Env, flat float32 Box obs
    spec = asd_envs.get_task("reach_around")           # TaskSpec: obs_keys, obs_dim, action_dim, ...
    expert = asd_envs.make_expert("reach_around", env, rng=0)
    asd_envs.list_tasks()

Rendering is headless: MUJOCO_GL defaults to "egl" (set here, before mujoco is imported) unless
the user already set it.
"""
import os as _os
import sys as _sys

if _sys.platform.startswith("linux"):
    _os.environ.setdefault("MUJOCO_GL", "egl")

from . import tasks as _tasks  # noqa: E402,F401  (registers the built-in tasks)
from .registry import (  # noqa: E402
    TaskSpec,
    get_task,
    list_tasks,
    make_env,
    make_env_from_metadata,
    make_expert,
    register_task,
)
from .registry import register_gymnasium_ids as _register_gymnasium_ids  # noqa: E402

_register_gymnasium_ids()  # gymnasium.make("asd_envs/reach_around-v0") works too

DEFAULT_TASK = "reach_around"
TASKS = tuple(list_tasks())

__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "make_env",
    "make_env_from_metadata",
    "make_expert",
    "register_task",
]
