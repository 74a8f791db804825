"""Writing files so that a crash never leaves a half-written one: the one atomic writer.

Everything the project writes that a later run reads back (results.json, episodes.jsonl, run
meta, checkpoints, training state) goes through :func:`atomic_write`: the data is written to a
temporary file beside the target, flushed to disk, then renamed over the target in one step.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["atomic_write", "write_json", "write_jsonl", "json_default"]


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], None]) -> Path:
    """Replace ``path`` with ``data`` (bytes, text, or a function that writes the given temp path)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if callable(data):
        data(str(tmp))
    else:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def json_default(o: Any) -> Any:
    """JSON for numpy scalars and arrays and paths (everything else as its str)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` as (indented) JSON, atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, default=json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    """One JSON object per line, atomically (e.g. a resumed run's kept episodes)."""
    return atomic_write(path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows))
