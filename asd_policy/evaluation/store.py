"""What an evaluation keeps on disk while it runs: episodes.jsonl (one row per finished episode,
fsynced), run_meta.json (the settings the episodes ran with) and resuming from them."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from asd_policy.core.io import json_default, write_json, write_jsonl
from asd_policy.evaluation.config import EvalError

__all__ = ["RESULTS_NAME", "EPISODES_NAME", "META_NAME", "EpisodeStore", "read_rows"]

RESULTS_NAME = "results.json"
EPISODES_NAME = "episodes.jsonl"
META_NAME = "run_meta.json"

#: Settings that must match for a resumed run to continue the same episodes.
RESUME_KEYS = ("task", "checkpoint", "seed", "max_steps", "realtime", "n_action_steps", "control_hz",
               "transition", "ensemble_decay", "on_miss", "latency")
#: The value of a key that run_meta.json files written before it existed meant.
_RESUME_DEFAULTS = {"on_miss": "hold"}


def read_rows(path: Path) -> list[dict]:
    """The rows of an episodes.jsonl; a line cut short by a crash is skipped (that episode runs again)."""
    rows: list[dict] = []
    if not path.exists():
        return rows
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _resume_value(meta: Mapping[str, Any], key: str) -> Any:
    value = meta.get(key, _RESUME_DEFAULTS.get(key))
    if key == "task" and isinstance(value, Mapping) and not value.get("cameras"):
        # image_size means nothing without cameras (runs before it defaulted to None wrote 84)
        value = {k: v for k, v in value.items() if k != "image_size"}
    return value


def _check_resume(old: Mapping[str, Any], new: Mapping[str, Any], out_dir: Path) -> None:
    for key in RESUME_KEYS:
        was, now = _resume_value(old, key), _resume_value(new, key)
        if was != now:
            raise EvalError(f"cannot resume {out_dir}: it was run with {key}={was!r}, now {key}={now!r}")
    for name, settings in new["samplers"].items():
        if name in old.get("samplers", {}) and old["samplers"][name] != settings:
            raise EvalError(f"cannot resume {out_dir}: sampler {name!r} was {old['samplers'][name]}, now {settings}")


def _first_per_episode(rows: Iterable[dict], seed: int) -> list[dict]:
    """One row per (sampler, episode), the first written, from this seed's episodes only."""
    seen, kept = set(), []
    for r in rows:
        key = (r.get("sampler"), r.get("episode"))
        if key not in seen and r.get("seed") == seed + int(r.get("episode", -10**9)):
            seen.add(key)
            kept.append(r)
    return kept


class EpisodeStore:
    """The rows of one run directory: read back on resume, appended (and fsynced) as episodes end.

    ``meta`` (task, checkpoint, seed, samplers, ...) goes to run_meta.json; resuming checks it
    against the stored one. The jsonl is rewritten atomically with the rows kept (dropping a
    torn last line) before new rows are appended, so a crash never loses finished episodes.
    """

    def __init__(self, out_dir: Path, meta: dict, resume: bool):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / EPISODES_NAME
        meta_path = self.out_dir / META_NAME
        rows: list[dict] = []
        if resume:
            if meta_path.exists():
                old = json.loads(meta_path.read_text())
                _check_resume(old, meta, self.out_dir)
                meta["samplers"] = {**old.get("samplers", {}), **meta["samplers"]}
            rows = _first_per_episode(read_rows(self.path), int(meta["seed"]))
        write_json(meta_path, meta)
        write_jsonl(self.path, rows)
        self.meta = meta
        self.rows = rows
        self.done = {(r["sampler"], int(r["episode"])) for r in rows}
        self._file = self.path.open("a")

    def count_done(self, names: Iterable[str], episodes: int) -> int:
        names = set(names)
        return sum(1 for s, e in self.done if s in names and e < episodes)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add((row["sampler"], int(row["episode"])))
        self._file.write(json.dumps(row, default=json_default) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
