"""LeRobot v3.0 datasets both ways: read one as :class:`~asd_policy.data.Demonstrations`, write our demos as one.

The layout (lerobot 0.4.4's ``LeRobotDataset``, codebase version ``v3.0``) is a directory::

    meta/info.json                            codebase_version, fps, features {name: dtype, shape, names}, totals
    meta/stats.json                           {feature: min, max, mean, std, count, q01, q10, q50, q90, q99}
    meta/tasks.parquet                        the task strings (the pandas index) and their task_index
    meta/episodes/chunk-000/file-000.parquet  per episode: length, dataset_from_index / dataset_to_index (its
                                              rows in the data files), data/chunk_index, data/file_index, stats/*
    data/chunk-000/file-000.parquet           per frame: observation.state[, observation.environment_state],
                                              [observation.images.<camera> (PNG bytes, HF datasets' Image struct),]
                                              action, timestamp, frame_index, episode_index, index, task_index
    videos/<camera>/chunk-000/file-000.mp4    video camera features (not read)

Reading (``asd_policy.data.load_demonstrations`` on a directory): the observation is ``observation.state``
then ``observation.environment_state`` (when present), as LeRobot's diffusion policy concatenates them; the
``obs_keys`` are those feature names. Image features ``observation.images.<camera>`` are decoded into each
episode's ``images["<camera>_image"]`` (uint8 [T, H, W, 3]), apart from the flat observation. Episodes come
from ``meta/episodes`` (else the ``episode_index`` column). Only pyarrow is needed (``pip install -e ".[lerobot]"``;
Pillow too for image features), not ``datasets`` or ``lerobot``.

Writing: :class:`asd_policy.data.lerobot_export.LeRobotWriter` (``scripts/collect.py format=lerobot``), with the
layout constants defined here.
"""
from __future__ import annotations

import glob
import io
import json
import os
from typing import Mapping, Sequence

import numpy as np

from asd_policy.data.demos import Demonstrations, Episode

__all__ = ["CODEBASE_VERSION", "STATE_FEATURES", "MissingPyarrow", "is_lerobot_dataset", "read_info",
           "load_lerobot_dataset"]

CODEBASE_VERSION = "v3.0"
#: The low-dim observation features, in the order LeRobot's diffusion policy concatenates them.
STATE_FEATURES = ("observation.state", "observation.environment_state")
INFO_PATH = os.path.join("meta", "info.json")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # files per chunk directory, as LeRobot
DATA_FILES_SIZE_IN_MB = 100  # a data file is closed before it grows past this, as LeRobot
VIDEO_FILES_SIZE_IN_MB = 200
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot 0.4.4's stats carry q01 ... q99
ASD_KEY = "asd_policy"  # our extra block in info.json
IMAGE_PREFIX = "observation.images."  # a camera's feature: observation.images.<camera>
IMAGE_NAMES = ("height", "width", "channels")  # an image feature's axis names, as LeRobot's
DEFAULT_FPS = 10  # only when the task's control rate is unknown (every registered task knows its rate)
_NOT_STATE = ("image", "video", "string")
_FIX = "the dataset is incomplete or damaged: copy or download it again, or re-export it with " \
       "`python scripts/collect.py task=<task> format=lerobot output=<dir>`"


class MissingPyarrow(ImportError, ValueError):
    """pyarrow is not installed (a ValueError too, so the scripts print it as their one-line error)."""


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingPyarrow(
            'LeRobot datasets are parquet files and need pyarrow: pip install -e ".[lerobot]"'
        ) from None
    return pa, pc, pq


def image_feature(image_key: str) -> str:
    """A camera's observation key (``<camera>_image``, robomimic's naming) as its LeRobot feature."""
    return IMAGE_PREFIX + image_key.removesuffix("_image")


def image_obs_key(feature: str) -> str:
    """A LeRobot image feature (``observation.images.<camera>``) as our observation key ``<camera>_image``."""
    return feature.removeprefix(IMAGE_PREFIX) + "_image"


# ------------------------------------------------------------------------------------------ reading
def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with ``meta/info.json`` (a LeRobot dataset root)."""
    return os.path.isfile(os.path.join(os.fspath(path), INFO_PATH))


def read_info(root: str | os.PathLike) -> dict:
    """``meta/info.json`` of a LeRobot v3.0 dataset, checked: the version and the feature table."""
    root = os.fspath(root)
    path = os.path.join(root, INFO_PATH)
    if not os.path.isfile(path):
        parent = os.path.dirname(os.path.abspath(root))
        hint = f" ({parent!r} is one: pass that)" if is_lerobot_dataset(parent) else ""
        raise ValueError(f"{root!r} is a directory without meta/info.json, so it is not a LeRobot dataset{hint}; "
                         f"pass a LeRobot v3.0 dataset root (holding meta/ and data/) or a robomimic-format .hdf5 file")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not valid JSON ({e}); {_FIX}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path!r} holds a {type(info).__name__}, not LeRobot's info object; {_FIX}")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        if isinstance(version, str) and version.startswith(("v1", "v2")):
            raise ValueError(
                f"{path!r}: codebase_version {version!r} is an older LeRobot format; this reader takes "
                f"{CODEBASE_VERSION}. Convert it with lerobot's converter: python -m "
                f"lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<id> --root={root} --push-to-hub=false"
                f" (a v2.0 dataset first needs lerobot's v2.0 -> v2.1 conversion)"
            )
        raise ValueError(f"{path!r}: codebase_version {version!r} is not supported; this reader takes "
                         f"{CODEBASE_VERSION} (the format of lerobot 0.4.4)")
    features = info.get("features")
    if not isinstance(features, dict) or not all(
        isinstance(ft, dict) and "dtype" in ft and "shape" in ft for ft in features.values()
    ):
        raise ValueError(f"{path!r}: 'features' must map each feature name to its dtype and shape; {_FIX}")
    return info


def _vector_width(features: dict, key: str, path: str) -> int:
    """The width of a 1-D numeric feature, or the error that says why ``key`` cannot be one."""
    if key not in features:
        raise ValueError(f"{path!r}: no feature {key!r} (features: {sorted(features)})")
    ft = features[key]
    shape = list(ft["shape"])
    if ft["dtype"] in _NOT_STATE or len(shape) != 1:
        raise ValueError(f"{path!r}: feature {key!r} ({ft['dtype']}, shape {shape}) is not a 1-D vector; "
                         f"the state-only policy reads 1-D numeric features")
    return int(shape[0])


def _observation_keys(features: dict, obs_keys: Sequence[str] | None, path: str) -> tuple[str, ...]:
    if obs_keys is None:
        obs_keys = [k for k in STATE_FEATURES if k in features]
        if not obs_keys:
            cameras = [k for k, ft in features.items() if ft["dtype"] in ("image", "video")]
            raise ValueError(
                f"{path!r} has neither {STATE_FEATURES[0]!r} nor {STATE_FEATURES[1]!r} "
                f"(features: {sorted(features)}); the policy is state-only"
                + (f" and cannot use the camera features {cameras}" if cameras else "")
                + "; pass obs_keys=[...] naming 1-D features to use instead"
            )
    return tuple(obs_keys)


def _column(table, name: str, width: int, path: str) -> np.ndarray:
    """One column of a data file as [rows, width] (fixed-size lists, lists or scalars)."""
    pa, pc, _ = _pyarrow()
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise ValueError(f"{path!r}: column {name!r} has {col.null_count} missing values; {_FIX}")
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if (lengths != width).any():
            raise ValueError(f"{path!r}: column {name!r} has rows of width {sorted(set(lengths.tolist()))}, "
                             f"but meta/info.json says {width}; {_FIX}")
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    if width != 1:
        raise ValueError(f"{path!r}: column {name!r} holds scalars, but meta/info.json says width {width}; {_FIX}")
    return col.to_numpy(zero_copy_only=False).reshape(len(col), 1)


def _read_parquet(path: str, columns: Sequence[str], optional: Sequence[str] = ()):
    """The named columns (and those of ``optional`` it has) of one parquet file, or one clear error."""
    pa, _, pq = _pyarrow()
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if not (missing := [k for k in columns if k not in names]):
            return pf.read(columns=[*columns, *(k for k in optional if k in names)])
    except (OSError, pa.lib.ArrowException) as e:  # truncated or not parquet at all
        raise ValueError(f"{path!r} is not a readable parquet file ({e}); {_FIX}") from None
    raise ValueError(f"{path!r} has no column {missing[0]!r} (columns: {names}); {_FIX}")


def _read_frames(root: str, widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The columns ``widths`` names, [rows, width] each, over all data files in LeRobot's order (the sorted
    chunk/file paths)."""
    paths = sorted(glob.glob(os.path.join(root, "data", "*", "*.parquet")))
    if not paths:
        raise ValueError(f"{root!r}: no data files (data/chunk-*/file-*.parquet); {_FIX}")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in widths}
    for path in paths:
        table = _read_parquet(path, list(widths))
        for k, width in widths.items():
            parts[k].append(_column(table, k, width, path))
    return {k: np.concatenate(v) for k, v in parts.items()}


_EPISODE_COLUMNS = ("episode_index", "dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index")


def _episode_rows(root: str, episode_index: np.ndarray) -> tuple[str, list[tuple]]:
    """Where the episodes are described, and per episode (index, first row, end row, data chunk, data file):
    from meta/episodes, else from the runs of equal values of the ``episode_index`` column."""
    paths = sorted(glob.glob(os.path.join(root, "meta", "episodes", "*", "*.parquet")))
    if not paths:
        cuts = np.flatnonzero(np.diff(episode_index)) + 1
        starts, ends = np.r_[0, cuts], np.r_[cuts, len(episode_index)]
        unknown_file = [None] * len(starts)
        rows = zip(episode_index[starts].tolist(), starts.tolist(), ends.tolist(), unknown_file, unknown_file)
        return os.path.join(root, "data"), list(rows)
    rows: list[tuple] = []
    for path in paths:
        table = _read_parquet(path, _EPISODE_COLUMNS[:3], optional=_EPISODE_COLUMNS[3:])
        cols = [table.column(k).to_pylist() if k in table.column_names else [None] * table.num_rows
                for k in _EPISODE_COLUMNS]
        rows += zip(*cols)
    return os.path.join(root, "meta", "episodes"), rows


def _episode_ranges(root: str, info: dict, episode_index: np.ndarray) -> list[tuple[int, int, int]]:
    """(episode index, first row, end row) of every episode, in episode order, checked against the data."""
    n = len(episode_index)
    where, rows = _episode_rows(root, episode_index)
    rows.sort(key=lambda r: r[0])
    if len({r[0] for r in rows}) != len(rows):
        raise ValueError(f"{where!r}: an episode_index appears in more than one place; {_FIX}")
    for e, start, end, chunk, file in rows:
        if file is not None:  # the table names the episode's data file: it must be there
            data_file = os.path.join(root, info.get("data_path", DATA_PATH).format(chunk_index=chunk, file_index=file))
            if not os.path.isfile(data_file):
                raise ValueError(f"{data_file!r} is missing (meta/episodes puts episode {e} in it); {_FIX}")
        if not 0 <= start < end <= n or (episode_index[start:end] != e).any():
            raise ValueError(
                f"{where!r}: episode {e} is rows [{start}, {end}) but the data files have {n} rows and "
                f"those rows are not all episode {e}; the metadata and the data disagree: {_FIX}"
            )
    ranges = [(int(e), int(start), int(end)) for e, start, end, _, _ in rows]
    covered = sum(end - start for _, start, end in ranges)
    total_frames, total_episodes = info.get("total_frames"), info.get("total_episodes")
    if covered != n or (total_frames is not None and total_frames != n) or (
        total_episodes is not None and total_episodes != len(ranges)
    ):
        raise ValueError(
            f"{os.path.join(root, INFO_PATH)!r}: inconsistent lengths: info.json says {total_frames} frames in "
            f"{total_episodes} episodes, the episode table covers {covered} rows in {len(ranges)} episodes, the "
            f"data files hold {n} rows; {_FIX}"
        )
    return ranges


def _read_images(root: str, shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """The image features ``shapes`` names, decoded (PNG or any format PIL reads) to uint8 [rows, H, W, 3]
    over all data files in LeRobot's order, under our keys ``<camera>_image``."""
    from PIL import Image

    paths = sorted(glob.glob(os.path.join(root, "data", "*", "*.parquet")))
    out: dict[str, list[np.ndarray]] = {image_obs_key(k): [] for k in shapes}
    for path in paths:
        table = _read_parquet(path, list(shapes))
        for k, shape in shapes.items():
            for i, cell in enumerate(table.column(k).to_pylist()):
                if not cell or cell.get("bytes") is None:
                    raise ValueError(f"{path!r}: row {i} of image column {k!r} holds no image bytes; {_FIX}")
                frame = np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
                if frame.shape != tuple(shape):
                    raise ValueError(f"{path!r}: row {i} of {k!r} is an image of shape {list(frame.shape)}, "
                                     f"but meta/info.json says {list(shape)}; {_FIX}")
                out[image_obs_key(k)].append(frame)
    return {k: np.stack(v) for k, v in out.items()}


def load_lerobot_dataset(root: str | os.PathLike, obs_keys: Sequence[str] | None = None,
                         images: bool = True) -> Demonstrations:
    """Every episode of a LeRobot v3.0 dataset (see module docstring) as :class:`Demonstrations`; with
    ``images``, each episode's ``images`` holds every image feature ``observation.images.<cam>`` as
    ``<cam>_image`` (uint8 [T, H, W, 3]). Video features are not decoded."""
    root = os.fspath(root)
    info = read_info(root)
    info_path = os.path.join(root, INFO_PATH)
    features = info["features"]
    obs_keys = _observation_keys(features, obs_keys, info_path)
    widths = {k: _vector_width(features, k, info_path) for k in (*obs_keys, "action")}
    widths["episode_index"] = 1
    frames = _read_frames(root, widths)
    obs = np.concatenate([frames[k] for k in obs_keys], axis=1).astype(np.float32)
    actions = frames["action"].astype(np.float32)
    if not (np.isfinite(obs).all() and np.isfinite(actions).all()):
        raise ValueError(f"{root!r}: the data contain NaN or inf values; {_FIX}")
    ranges = _episode_ranges(root, info, frames["episode_index"][:, 0].astype(np.int64))
    shapes = {k: ft["shape"] for k, ft in features.items() if ft["dtype"] == "image"} if images else {}
    frames_of = _read_images(root, shapes) if shapes else {}
    episodes = [Episode(f"episode_{e}", obs[a:b], actions[a:b], {k: v[a:b] for k, v in frames_of.items()})
                for e, a, b in ranges]
    ours = info.get(ASD_KEY) if isinstance(info.get(ASD_KEY), dict) else {}
    valid = {f"episode_{e}" for e in ours.get("valid_episodes", [])}
    names = [ep.name for ep in episodes]
    if unknown := sorted(valid - set(names)):
        raise ValueError(f"{info_path!r}: {ASD_KEY}.valid_episodes names episodes that do not exist: {unknown[:5]}")
    # without our split every episode trains, as for an hdf5 file without masks
    split = {"train": [n for n in names if n not in valid], "valid": [n for n in names if n in valid]}
    return Demonstrations(
        path=root, episodes=episodes, obs_keys=obs_keys, obs_key_dims=tuple(widths[k] for k in obs_keys),
        env_args=dict(ours.get("env_args") or {}), task_name=ours.get("task"),
        train_names=split["train"], valid_names=split["valid"], masks=split if "valid_episodes" in ours else {},
        image_keys=tuple(frames_of),
    )


# ------------------------------------------------------------------------------------------ writing
