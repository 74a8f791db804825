"""Write our demos as a LeRobot v3.0 dataset (``scripts/collect.py format=lerobot``); the layout and the
reader are in :mod:`asd_policy.data.lerobot`.

The task's flat observation is split into ``observation.state`` (the task's ``state_keys``) and
``observation.environment_state`` (the rest), as LeRobot's diffusion policy requires one of the
latter or a camera. What our hdf5 files hold beyond LeRobot's format (task, ``env_args``, train/valid
split) goes into ``meta/info.json`` under ``"asd_policy"``, a key LeRobot ignores, so an export reads
back as its hdf5 file does. Simulator states and MJCF are not kept.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from asd_policy.data.lerobot import ASD_KEY, CHUNKS_SIZE, CODEBASE_VERSION, DATA_FILES_SIZE_IN_MB, DATA_PATH, DEFAULT_FPS, EPISODES_PATH, INFO_PATH, IMAGE_NAMES, QUANTILES, VIDEO_FILES_SIZE_IN_MB, VIDEO_PATH, _pyarrow, image_feature, image_obs_key, read_info

__all__ = ["LeRobotWriter"]


class LeRobotWriter:
    """Episodes -> a LeRobot v3.0 dataset at ``root``, written when closed (into a temporary directory
    next to it, then moved into place: a crash leaves no half-written dataset)::

        with LeRobotWriter("data/reach_around", spec.obs_keys, spec.state_keys, fps=spec.control_hz,
                           task_name="reach_around", env_args=env_args) as w:
            w.add_episode(obs, actions)   # obs: T dicts over obs_keys; actions [T, A]

    ``observation.state`` is the observation's first ``state_keys`` (default: all of ``obs_keys``) and
    ``observation.environment_state`` the rest, so the two concatenated are the flat observation.
    ``image_keys`` (e.g. ``["agentview_image"]``, uint8 [H, W, 3] in every observation dict) become the
    image features ``observation.images.<camera>``: PNG bytes in the parquet, as LeRobot writes them. LeRobot's
    diffusion policy needs an environment state (or a camera) besides the state, hence the split.
    ``root`` may exist if it is empty or a dataset this writer wrote (it is replaced, as an hdf5 output
    file is); anything else there is an error, so a mistyped output never deletes a directory. The valid
    split is the one ``asd_policy.data.robomimic_export.RobomimicWriter`` draws for the same ``valid_fraction`` and ``split_seed``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        obs_keys: Sequence[str],
        state_keys: Sequence[str] | None = None,
        fps: float | None = None,
        task_name: str | None = None,
        env_args: Mapping[str, Any] | None = None,
        task_description: str | None = None,
        robot_type: str | None = None,
        valid_fraction: float = 0.1,
        split_seed: int = 0,
        image_keys: Sequence[str] = (),
    ):
        _pyarrow()  # missing pyarrow stops a collection before it starts, not after
        self.root = os.fspath(root)
        _check_replaceable(self.root)
        self.obs_keys = tuple(obs_keys)
        self.state_keys = tuple(state_keys or self.obs_keys)
        if self.obs_keys[: len(self.state_keys)] != self.state_keys:
            raise ValueError(f"state_keys {list(self.state_keys)} must be the first keys of obs_keys "
                             f"{list(self.obs_keys)} (state then environment state is the flat observation)")
        fps = DEFAULT_FPS if fps is None else fps
        if not fps > 0:
            raise ValueError(f"fps={fps!r} is not valid; give the control rate in Hz (> 0)")
        self.fps = int(fps) if float(fps).is_integer() else float(fps)
        self.task_name, self.env_args, self.robot_type = task_name, dict(env_args or {}), robot_type
        self.task_description = task_description or task_name or "demonstration"
        self.valid_fraction, self.split_seed = float(valid_fraction), int(split_seed)
        self._obs: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._names: list[str] = []  # one per dimension of the flat observation
        self._state_width = 0
        self._closed = False
        self.image_keys = tuple(image_keys)
        self._pngs: dict[str, list[bytes]] = {image_feature(k): [] for k in self.image_keys}
        self._episode_image_stats: dict[str, list[dict]] = {image_feature(k): [] for k in self.image_keys}
        self._image_shapes: dict[str, tuple[int, ...]] = {}

    def add_episode(self, obs: Sequence[Mapping[str, np.ndarray]], actions: np.ndarray) -> str:
        """One episode: ``obs[t]`` (a dict over ``obs_keys``) is the observation action ``t`` was taken in."""
        actions = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)
        if not len(actions) or len(obs) != len(actions):
            raise ValueError(f"need one observation per action (at least one), got {len(obs)} for {len(actions)}")
        parts = {k: np.stack([np.asarray(o[k], dtype=np.float32).reshape(-1) for o in obs]) for k in self.obs_keys}
        flat = np.concatenate(list(parts.values()), axis=1)
        if self._obs and (flat.shape[1], actions.shape[1]) != (self._obs[0].shape[1], self._actions[0].shape[1]):
            raise ValueError(f"episode {len(self._obs)} has obs/action widths {flat.shape[1]}/{actions.shape[1]}, "
                             f"earlier ones {self._obs[0].shape[1]}/{self._actions[0].shape[1]}")
        if not self._obs:
            self._names = [k if p.shape[1] == 1 else f"{k}_{i}" for k, p in parts.items() for i in range(p.shape[1])]
            self._state_width = sum(parts[k].shape[1] for k in self.state_keys)
        self._add_images(obs)
        self._obs.append(flat)
        self._actions.append(actions)
        return f"episode_{len(self._obs) - 1}"

    def _add_images(self, obs: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Encode an episode's frames as PNG now (kept compressed until close) and take LeRobot's episode stats."""
        episode = {image_feature(k): np.stack([np.asarray(o[k]) for o in obs]) for k in self.image_keys}
        for feature, frames in episode.items():  # all checked before any is kept: a refused episode leaves no frames
            shape = self._image_shapes.get(feature, frames.shape[1:])
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != shape or shape[-1] != 3:
                raise ValueError(f"{image_obs_key(feature)}: frames must be uint8 [T, H, W, 3] of one size "
                                 f"({list(shape)}), got {frames.dtype} {list(frames.shape)}")
        for feature, frames in episode.items():
            self._image_shapes[feature] = frames.shape[1:]
            self._pngs[feature] += [_png(f) for f in frames]
            self._episode_image_stats[feature].append(_image_stats(frames))

    def close(self) -> None:
        if self._closed:
            return
        if not self._obs:
            raise ValueError(f"no episodes to write to {self.root!r}")
        parent = os.path.dirname(os.path.abspath(self.root))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(self.root))}.part-", dir=parent)
        try:
            self._write(tmp)
            _replace_dir(tmp, self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._closed = True

    def abort(self) -> None:
        self._obs.clear()
        self._pngs.clear()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close() if exc_type is None else self.abort()

    def _frames(self) -> dict[str, np.ndarray]:
        """Every data column, in LeRobot's order: the features, then its five bookkeeping columns."""
        obs, w = np.concatenate(self._obs), self._state_width
        frames = {"observation.state": obs[:, :w]}
        if w < obs.shape[1]:
            frames["observation.environment_state"] = obs[:, w:]
        frames.update({k: np.array(v, dtype=object) for k, v in self._pngs.items()})  # PNG bytes per frame
        frame_index = np.concatenate([np.arange(len(a), dtype=np.int64) for a in self._actions])
        n = len(frame_index)
        return {
            **frames,
            "action": np.concatenate(self._actions),
            "timestamp": (frame_index / self.fps).astype(np.float32),  # LeRobot's frame_index / fps
            "frame_index": frame_index,
            "episode_index": np.repeat(np.arange(len(self._actions), dtype=np.int64), [len(a) for a in self._actions]),
            "index": np.arange(n, dtype=np.int64),
            "task_index": np.zeros(n, dtype=np.int64),  # one task per dataset
        }

    def _write(self, tmp: str) -> None:
        _, _, pq = _pyarrow()
        frames = self._frames()
        starts = np.r_[0, np.cumsum([len(a) for a in self._actions])]
        files = _data_files(np.diff(starts), frames)
        for k in sorted(set(files)):
            rows = np.concatenate([np.arange(starts[e], starts[e + 1]) for e, f in enumerate(files) if f == k])
            path = os.path.join(tmp, DATA_PATH.format(chunk_index=k // CHUNKS_SIZE, file_index=k % CHUNKS_SIZE))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(_arrow_table({c: v[rows] for c, v in frames.items()}), path, compression="snappy")
        path = os.path.join(tmp, EPISODES_PATH.format(chunk_index=0, file_index=0))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        per_episode, stats = self._feature_stats(frames, starts)
        pq.write_table(_arrow_table(_episode_columns(per_episode, starts, files, self.task_description)), path)
        pq.write_table(_tasks_table(self.task_description), os.path.join(tmp, "meta", "tasks.parquet"))
        _write_json(os.path.join(tmp, "meta", "stats.json"), stats)
        _write_json(os.path.join(tmp, INFO_PATH), self._info(frames))

    def _feature_stats(self, frames: dict[str, np.ndarray], starts: np.ndarray) -> tuple[list[dict], dict]:
        """Each episode's statistics per feature, and the dataset's: LeRobot's image statistics for the frames
        (taken as the episodes were added, then aggregated), ours over all values for the rest."""
        images = self._episode_image_stats
        per_episode = [{c: images[c][e] if c in images else _stats(v[a:b]) for c, v in frames.items()}
                       for e, (a, b) in enumerate(zip(starts[:-1], starts[1:]))]
        return per_episode, {c: _aggregate_stats(images[c]) if c in images else _stats(v) for c, v in frames.items()}

    def _info(self, frames: dict[str, np.ndarray]) -> dict:
        names = {"observation.state": self._names[: self._state_width],
                 "observation.environment_state": self._names[self._state_width:],
                 "action": [f"action_{i}" for i in range(frames["action"].shape[1])]}
        features = {c: {"dtype": str(v.dtype), "shape": [v.shape[1] if v.ndim == 2 else 1], "names": names.get(c)}
                    for c, v in frames.items()}
        features.update({c: {"dtype": "image", "shape": list(shape), "names": list(IMAGE_NAMES)}
                         for c, shape in self._image_shapes.items()})
        n = len(self._obs)
        # the (random) valid split as RobomimicWriter.close draws it, so both formats of a collection agree
        n_valid = int(round(self.valid_fraction * n)) if n > 1 else 0
        valid = sorted(np.random.default_rng(self.split_seed).permutation(n)[:n_valid].tolist())
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": n, "total_frames": len(frames["index"]), "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": self.fps,
            "splits": {"train": f"0:{n}"},  # LeRobot's: every episode; our split is in ASD_KEY
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features,
            ASD_KEY: {"task": self.task_name, "env_args": self.env_args, "valid_episodes": valid},
        }


def _data_files(lengths: Sequence[int], frames: dict[str, np.ndarray]) -> list[int]:
    """The data file (a running number: chunk * CHUNKS_SIZE + file) of each episode. As LeRobot, an
    episode never spans two files and a file is closed before it passes DATA_FILES_SIZE_IN_MB."""
    frame_bytes = sum(v[0].nbytes if v.dtype != object else np.mean([len(b) for b in v]) for v in frames.values())
    per_file = max(1, DATA_FILES_SIZE_IN_MB * 2**20 // frame_bytes)
    files, k, used = [], 0, 0
    for T in lengths:
        if used and used + T > per_file:
            k, used = k + 1, 0
        files.append(k)
        used += T
    return files


def _episode_columns(per_episode: list[dict], starts: np.ndarray, files: Sequence[int], task: str) -> dict[str, list]:
    """meta/episodes' columns, as lerobot 0.4.4 writes them (``per_episode``: each episode's stats per feature)."""
    n = len(files)
    cols: dict[str, list] = {
        "episode_index": list(range(n)),
        "tasks": [[task]] * n,
        "length": np.diff(starts).tolist(),
        "data/chunk_index": [k // CHUNKS_SIZE for k in files],
        "data/file_index": [k % CHUNKS_SIZE for k in files],
        "dataset_from_index": starts[:-1].tolist(),
        "dataset_to_index": starts[1:].tolist(),
    }
    for c in per_episode[0]:
        for s in per_episode[0][c]:
            cols[f"stats/{c}/{s}"] = [ep[c][s] for ep in per_episode]
    cols["meta/episodes/chunk_index"] = [0] * n
    cols["meta/episodes/file_index"] = [0] * n
    return cols


def _stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's per-feature statistics (population std, exact quantiles)."""
    v = values.reshape(len(values), -1)
    x = v.astype(np.float64)
    out = {"min": v.min(0), "max": v.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(v)])}
    for q, row in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0)):
        out[f"q{round(q * 100):02d}"] = row
    return {k: np.asarray(s).tolist() for k, s in out.items()}


def _arrow_table(columns: Mapping[str, Any]):
    """A pyarrow table: 2-D arrays become fixed-size lists (what LeRobot's 1-D features are), PNG bytes
    image structs, the rest as given."""
    pa, _, _ = _pyarrow()
    arrays = {}
    for name, v in columns.items():
        if isinstance(v, np.ndarray) and v.dtype == object:
            arrays[name] = _image_structs(v, columns["frame_index"])
        elif isinstance(v, np.ndarray) and v.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        else:
            arrays[name] = pa.array(v)
    return pa.table(arrays)


def _image_structs(pngs: np.ndarray, frame_index: np.ndarray):
    """PNG bytes as the struct of HF datasets' ``Image`` feature, with the file name LeRobot's embedding keeps."""
    pa, _, _ = _pyarrow()
    paths = [f"frame-{i:06d}.png" for i in frame_index.tolist()]
    return pa.StructArray.from_arrays([pa.array(list(pngs), pa.binary()), pa.array(paths, pa.string())],
                                      names=["bytes", "path"])


def _png(frame: np.ndarray) -> bytes:
    """One frame as PNG, at the compression level LeRobot saves image features with (6)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _sample_indices(n: int) -> np.ndarray:
    """The frames LeRobot's compute_stats samples from an episode of ``n`` (all below 100, then ~n**0.75)."""
    k = n if n < 100 else max(100, min(int(n**0.75), 10_000))
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def _image_stats(frames: np.ndarray) -> dict[str, list]:
    """LeRobot's statistics of an episode's images: per channel, over the sampled frames (downsampled past
    300 pixels), pixels scaled to [0, 1], each statistic of shape [3, 1, 1]; count = frames sampled."""
    sample = frames[_sample_indices(len(frames))]
    h, w = sample.shape[1:3]
    if max(h, w) > 300:
        step = int(w / 150) if w > h else int(h / 150)
        sample = sample[:, ::step, ::step]
    per_channel = _stats(sample.reshape(-1, 3).astype(np.float64) / 255.0)
    out = {k: np.asarray(v).reshape(3, 1, 1).tolist() for k, v in per_channel.items() if k != "count"}
    return {**out, "count": [len(sample)]}


def _aggregate_stats(episodes: list[dict]) -> dict[str, list]:
    """The dataset's statistics from its episodes', as LeRobot's aggregate_feature_stats: count-weighted means,
    variances and quantiles (the spread of the episode means included), extreme min / max."""
    counts = np.array([s["count"][0] for s in episodes], dtype=np.float64)
    weights = (counts / counts.sum())[:, None, None, None]
    get = {k: np.array([s[k] for s in episodes], dtype=np.float64) for k in episodes[0] if k != "count"}
    mean = (weights * get["mean"]).sum(0)
    var = (weights * (get["std"] ** 2 + (get["mean"] - mean) ** 2)).sum(0)
    out = {k: (weights * v).sum(0) for k, v in get.items() if k.startswith("q")}
    out.update(min=get["min"].min(0), max=get["max"].max(0), mean=mean, std=np.sqrt(var))
    return {**{k: v.tolist() for k, v in out.items()}, "count": [int(counts.sum())]}


def _tasks_table(task: str):
    """meta/tasks.parquet: LeRobot reads it with pandas and looks tasks up by the index, so the task
    string is stored as pandas' index column, described by the pandas metadata pandas itself writes."""
    pa, _, _ = _pyarrow()
    index = "__index_level_0__"
    table = pa.table({"task_index": pa.array([0], pa.int64()), index: pa.array([task], pa.large_string())})
    columns = [dict(name="task_index", field_name="task_index", pandas_type="int64", numpy_type="int64", metadata=None),
               dict(name=None, field_name=index, pandas_type="unicode", numpy_type="object", metadata=None)]
    pandas = dict(index_columns=[index], column_indexes=[], columns=columns, pandas_version="2.0.0")
    return table.replace_schema_metadata({"pandas": json.dumps(pandas)})


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)


def _check_replaceable(root: str) -> None:
    """``root`` is free to write: absent, an empty directory or a dataset this writer wrote."""
    if not os.path.exists(root) or (os.path.isdir(root) and not os.listdir(root)):
        return
    try:
        ours = ASD_KEY in read_info(root)
    except ValueError:
        ours = False
    if not ours:
        raise ValueError(f"output {root!r} exists and is not a LeRobot dataset written by scripts/collect.py; "
                         f"remove it or choose another output")


def _replace_dir(tmp: str, root: str) -> None:
    """Move the finished dataset ``tmp`` to ``root``, replacing what :func:`_check_replaceable` allows."""
    _check_replaceable(root)
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    if not os.path.exists(root):
        os.replace(tmp, root)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(root))}.old-", dir=os.path.dirname(tmp))
    os.replace(root, os.path.join(old, "dataset"))
    os.replace(tmp, root)
    shutil.rmtree(old)
