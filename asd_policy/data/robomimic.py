"""Reader of robomimic-format hdf5 demonstrations: the files written by ``scripts/collect.py`` and
the real robomimic low-dim and image datasets (``lift/ph/low_dim_v15.hdf5`` etc.) alike.

Default observation keys (``obs_keys=None``), in order of preference:
1. the ``asd_obs_keys`` attribute our collector writes;
2. the registered task's keys when the file's env is a known task (``Lift`` -> ``lift`` ...);
3. robomimic's standard low-dim keys present in the file: ``robot{i}_eef_pos``,
   ``robot{i}_eef_quat``, ``robot{i}_gripper_qpos`` for every robot, then ``object``.

Every problem with the input (not an HDF5 file, truncated/corrupt file, missing group or key,
inconsistent lengths) raises one ``ValueError`` that names the file and says how to fix it.
"""
from __future__ import annotations

import json
import re
from typing import Sequence

import numpy as np

from asd_policy.data.demos import Demonstrations, Episode

__all__ = ["load_robomimic"]

_FIX = "regenerate it with `python scripts/collect.py task=<task> output=<path>`"


def _demo_sort_key(name: str):
    m = re.search(r"(\d+)$", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def _decode(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _task_package():
    """``asd_envs``, or None where it cannot be imported: a training-only machine may have no
    gymnasium or mujoco, and the file then names its keys (or robomimic's defaults apply)."""
    try:
        import asd_envs
    except ImportError:
        return None
    return asd_envs


def _default_obs_keys(data_attrs, env_args: dict, task_name: str | None, available: Sequence[str]):
    if "asd_obs_keys" in data_attrs:
        return tuple(json.loads(_decode(data_attrs["asd_obs_keys"])))
    asd_envs = _task_package()
    if task_name is not None and asd_envs is not None and task_name in asd_envs.list_tasks():
        return tuple(asd_envs.get_task(task_name).obs_keys)
    keys = []
    robots = sorted({int(m.group(1)) for k in available if (m := re.match(r"robot(\d+)_", k))})
    for r in robots:
        for suffix in ("eef_pos", "eef_quat", "gripper_qpos"):
            if f"robot{r}_{suffix}" in available:
                keys.append(f"robot{r}_{suffix}")
    if "object" in available:
        keys.append("object")
    return tuple(keys)


def load_robomimic(path: str, obs_keys: Sequence[str] | None = None, images: bool = True) -> Demonstrations:
    """Every demo of a robomimic-format hdf5 file (see the module docstring)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(
            f"{path!r} is not a readable HDF5 file (corrupt or truncated?): {e}; {_FIX}"
        ) from None
    try:
        with f:
            return _read(f, path, obs_keys, images)
    except (OSError, RuntimeError, KeyError) as e:  # corrupt chunks / broken links while reading
        raise ValueError(f"{path!r} could not be read (corrupt file?): {e}; {_FIX}") from None


def _read(f, path: str, obs_keys: Sequence[str] | None, images: bool) -> Demonstrations:
    import h5py

    if "data" not in f:
        raise ValueError(
            f"{path!r} has no 'data' group, so it is not a robomimic-format dataset "
            f"(top-level keys: {sorted(f.keys())}); {_FIX}"
        )
    data = f["data"]
    env_args, task_name = _env_metadata(data.attrs, path)
    names = sorted((k for k in data.keys() if isinstance(data[k], h5py.Group)), key=_demo_sort_key)
    if not names:
        raise ValueError(f"{path!r} contains no demos under 'data/'; {_FIX}")
    first = data[names[0]]
    if "obs" not in first:
        raise ValueError(f"{path!r}: demo {names[0]!r} has no 'obs' group; {_FIX}")
    available = list(first["obs"].keys())
    if obs_keys is None:
        obs_keys = _default_obs_keys(data.attrs, env_args, task_name, available)
        if not obs_keys:
            raise ValueError(
                f"{path!r}: cannot tell which observation keys to use; pass obs_keys=[...] "
                f"(available: {available})"
            )
    obs_keys = tuple(obs_keys)
    image_keys = tuple(k for k in available if _is_image(first["obs"][k])) if images else ()

    episodes: list[Episode] = []
    key_dims: tuple[int, ...] | None = None
    for name in names:
        episode, dims = _read_episode(data[name], name, obs_keys, path)
        episode.images = _read_images(data[name], name, image_keys, len(episode), path)
        if key_dims is None:
            key_dims = dims
        elif dims != key_dims:
            raise ValueError(f"{path!r}: demo {name!r} has key widths {dims}, earlier demos {key_dims}")
        episodes.append(episode)
    masks = _read_masks(f, names, path)
    return Demonstrations(
        path=path,
        episodes=episodes,
        obs_keys=obs_keys,
        obs_key_dims=key_dims or (),
        env_args=env_args,
        task_name=task_name,
        train_names=sorted(masks.get("train", list(names)), key=_demo_sort_key),
        valid_names=sorted(masks.get("valid", []), key=_demo_sort_key),
        masks=masks,
        image_keys=image_keys,
    )


def _is_image(ds) -> bool:
    """Camera frames, as robomimic's image datasets store them: uint8 [T, H, W, 3]."""
    return ds.dtype == np.uint8 and ds.ndim == 4 and ds.shape[-1] == 3


def _read_images(g, name: str, image_keys: Sequence[str], T: int, path: str) -> dict[str, np.ndarray]:
    """The demo's camera frames under obs/<camera>_image, each uint8 [T, H, W, 3]."""
    out = {}
    for key in image_keys:
        if key not in g["obs"] or not _is_image(g["obs"][key]) or len(g["obs"][key]) != T:
            found = f"shape {g['obs'][key].shape}, {g['obs'][key].dtype}" if key in g["obs"] else "missing"
            raise ValueError(f"{path!r}: demo {name!r} obs/{key} ({found}) is not uint8 [{T}, H, W, 3] frames "
                             f"as in the first demo; {_FIX}, or pass images=False to read the state alone")
        out[key] = g["obs"][key][()]
    return out


def _env_metadata(attrs, path: str) -> tuple[dict, str | None]:
    """(env_args, task name): our collector's ``asd_task``, else the task of robomimic's env name."""
    env_args: dict = {}
    if "env_args" in attrs:
        try:
            env_args = json.loads(_decode(attrs["env_args"]))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r}: data.attrs['env_args'] is not valid JSON ({e}); {_FIX}") from None
    if "asd_task" in attrs:
        return env_args, _decode(attrs["asd_task"])
    if env_args.get("asd_task"):
        return env_args, str(env_args["asd_task"])
    if _task_package() is None:
        return env_args, None
    from asd_envs.robomimic_tasks import ENV_NAME_TO_TASK

    return env_args, ENV_NAME_TO_TASK.get(env_args.get("env_name"))


def _read_episode(g, name: str, obs_keys: Sequence[str], path: str) -> tuple[Episode, tuple[int, ...]]:
    """One demo group -> its Episode (keys concatenated in order) and the width of each key."""
    for part in ("obs", "actions"):
        if part not in g:
            raise ValueError(f"{path!r}: demo {name!r} has no {part!r}; {_FIX}")
    actions = np.asarray(g["actions"][()], dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[:, None]
    T = len(actions)
    parts = []
    for key in obs_keys:
        if key not in g["obs"]:
            raise ValueError(
                f"{path!r}: observation key {key!r} missing in demo {name!r} "
                f"(available: {sorted(g['obs'].keys())}); pass obs_keys= with keys the file has"
            )
        arr = np.asarray(g["obs"][key][()], dtype=np.float32).reshape(len(g["obs"][key]), -1)
        if len(arr) != T:
            raise ValueError(f"{path!r}: demo {name!r} has {len(arr)} steps of obs/{key} but {T} actions")
        parts.append(arr)
    obs = np.concatenate(parts, axis=1) if parts else np.zeros((T, 0), np.float32)
    if not (np.isfinite(obs).all() and np.isfinite(actions).all()):
        raise ValueError(f"{path!r}: demo {name!r} contains NaN or inf values; {_FIX}")
    return Episode(name=name, obs=obs, actions=actions), tuple(p.shape[1] for p in parts)


def _read_masks(f, names: Sequence[str], path: str) -> dict[str, list[str]]:
    """robomimic's ``mask/<split>`` lists of demo names, checked against the demos present."""
    masks: dict[str, list[str]] = {}
    if "mask" in f:
        for k in f["mask"].keys():
            masks[k] = [_decode(x) for x in np.asarray(f["mask"][k][()]).reshape(-1)]
    known = set(names)
    for k, v in masks.items():
        missing = [n for n in v if n not in known]
        if missing:
            raise ValueError(f"{path!r}: mask/{k} names demos that do not exist: {missing[:5]}")
    return masks
