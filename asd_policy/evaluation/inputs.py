"""What an evaluation runs on: the checked policy and the environments (one, a list, or a
gymnasium vector env), replaced when one breaks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym

import asd_envs
from asd_policy.control.episode import EpisodeResult
from asd_policy.evaluation.config import EvalError
from asd_policy.policy.checkpoint import load_policy

__all__ = ["load_checked_policy", "connect_policy_server", "task_env_fn", "check_dims", "EnvPool"]


def _policy_task(policy: Any) -> str | None:
    cfg = getattr(policy, "config", None)
    for obj, name in ((cfg, "task_name"), (policy, "task_name"), (policy, "task")):
        val = getattr(obj, name, None) if obj is not None else None
        if isinstance(val, str):
            return val
    return None


def load_checked_policy(checkpoint: str | os.PathLike, task: str | None, device: str = "cpu",
                        obs_dim: int | None = None, action_dim: int | None = None) -> Any:
    """Load a checkpoint and check that it belongs to ``task``; one-line :class:`EvalError`s."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise EvalError(f"checkpoint not found: {path} (pass checkpoint=<dir with policy.json>, or a LeRobot pretrained_model/ dir)")
    try:
        policy = load_policy(path, device=device, obs_dim=obs_dim, action_dim=action_dim, task_name=task)
    except (ValueError, OSError, KeyError) as exc:
        raise EvalError(" ".join(str(exc).split())) from None
    trained = _policy_task(policy)
    if task is not None and trained is not None and trained != task:
        raise EvalError(
            f"checkpoint {path} was trained for task {trained!r}, not {task!r}; "
            f"use checkpoints/{task} or pass task={trained}"
        )
    if trained is None and task is not None and getattr(policy, "origin", None):
        policy.config.task_name = task  # a LeRobot checkpoint records no task: it is the one it runs on
    return policy


def connect_policy_server(url: str, task: str | None) -> Any:
    """A :class:`~asd_policy.serving.RemotePolicy` for the server at ``url``, checked to serve ``task``."""
    from asd_policy.serving import RemoteError, RemotePolicy

    try:
        remote = RemotePolicy(url, max_records=None)  # every chunk's server timing: results report them all
    except RemoteError as exc:
        raise EvalError(str(exc)) from None
    if task is not None and remote.task_name is not None and remote.task_name != task:
        remote.close()
        raise EvalError(f"the server at {url} serves a policy for task {remote.task_name!r}, not {task!r}; "
                        f"pass task={remote.task_name}")
    return remote


def task_env_fn(task: str, env_kwargs: dict) -> tuple[Any, Callable[..., Any]]:
    """(the task's spec, ``env_fn(render_mode=None)``) for a task known to ``asd_envs``."""
    try:
        spec = asd_envs.get_task(task)
    except (ValueError, KeyError) as exc:
        raise EvalError(" ".join(str(exc).split())) from None

    def env_fn(render_mode: str | None = None) -> Any:
        extra = {"render_mode": render_mode} if render_mode else {}
        return asd_envs.make_env(task, **env_kwargs, **extra)

    return spec, env_fn


def check_dims(policy: Any, env: Any, task: str | None) -> None:
    """The policy's observation (state width, cameras) and action width against the env's spaces."""
    obs_dim = getattr(policy, "obs_dim", None)
    act_dim = getattr(policy, "action_dim", None)
    space = env.observation_space
    cameras = (getattr(getattr(policy, "config", None), "image_features", None) or [])
    if isinstance(space, gym.spaces.Dict):
        check_cameras(cameras, space, task)
        space = space.spaces.get("state", space)
    elif cameras:
        raise EvalError(f"the policy sees cameras {[c['name'] for c in cameras]}, but task {task!r} gives a flat "
                        f"observation; run it on the task's camera variant (e.g. task={task}_image)")
    o, a = space.shape, env.action_space.shape
    if obs_dim is not None and o and int(o[-1]) != int(obs_dim):
        raise EvalError(f"policy expects obs_dim={obs_dim} but task {task!r} has {o[-1]}")
    if act_dim is not None and a and int(a[-1]) != int(act_dim):
        raise EvalError(f"policy emits action_dim={act_dim} but task {task!r} has {a[-1]}")


def check_cameras(cameras: list[dict], space: Any, task: str | None) -> None:
    """Every camera the policy sees is a uint8 [H, W, C] frame of the env's dict observation."""
    for c in cameras:
        name, (ch, h, w) = c["name"], c["shape"]
        sub = space.spaces.get(name)
        if sub is None:
            raise EvalError(f"the policy sees camera {name!r}, which task {task!r} does not render (its observation "
                            f"holds {sorted(space.spaces)}); set the task's cameras, or map the names with task.obs_map")
        if tuple(sub.shape) != (h, w, ch):
            raise EvalError(f"camera {name!r} of task {task!r} renders {list(sub.shape)} frames; the policy takes "
                            f"[{h}, {w}, {ch}] (set the task's image_size to match)")


def _close(envs: Any) -> None:
    for e in envs if isinstance(envs, list) else [envs]:
        try:
            e.close()
        except Exception:  # noqa: BLE001 - a broken env may fail to close; it is dropped either way
            pass


class EnvPool:
    """``num_envs`` envs from ``env_fn``: a list (``vector_env=None``) or a gymnasium vector env."""

    def __init__(self, env_fn: Callable[..., Any], num_envs: int, vector_env: str | None, render: bool,
                 task: str | None):
        self.env_fn, self.num_envs, self.vector_env = env_fn, num_envs, vector_env
        self.render_mode = "rgb_array" if render else None
        try:
            self.envs = self._make_batch()
        except EvalError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to build the env is a bad input
            raise EvalError(f"cannot create the environment for task {task!r}: {type(exc).__name__}: {exc}") from None

    def _make_one(self) -> Any:
        return self.env_fn(render_mode=self.render_mode) if self.render_mode else self.env_fn()

    def _make_batch(self) -> Any:
        if self.vector_env in ("sync", "async"):
            import gymnasium as gym

            cls = gym.vector.SyncVectorEnv if self.vector_env == "sync" else gym.vector.AsyncVectorEnv
            return cls([self._make_one for _ in range(self.num_envs)])
        return [self._make_one() for _ in range(self.num_envs)]

    @property
    def first(self) -> Any:
        """One plain env (for dimension checks and the real-time loop); None in an async vector env."""
        return self.envs[0] if isinstance(self.envs, list) else getattr(self.envs, "envs", [None])[0]

    @property
    def observation_space(self) -> Any:
        if isinstance(self.envs, list):
            return self.envs[0].observation_space
        return self.envs.single_observation_space

    def for_seeds(self, seeds: Sequence[int], pad_seed: int) -> tuple[Any, list[int]]:
        """(envs, seeds) for a batch of ``len(seeds)`` episodes. A vector env has a fixed size:
        it is padded with seeds from ``pad_seed`` on, whose results the caller drops."""
        if isinstance(self.envs, list):
            return self.envs[: len(seeds)], list(seeds)
        return self.envs, list(seeds) + [pad_seed + j for j in range(self.num_envs - len(seeds))]

    def replace_broken(self, results: Sequence[EpisodeResult]) -> None:
        """An env that raised may be left broken: replace it (the whole vector env if vectorised)."""
        if not any(r.error for r in results):
            return
        if isinstance(self.envs, list):
            for i, r in enumerate(results):
                if r.error and i < len(self.envs):
                    _close([self.envs[i]])
                    self.envs[i] = self._make_one()
            return
        _close(self.envs)
        self.envs = self._make_batch()

    def close(self) -> None:
        _close(self.envs)
