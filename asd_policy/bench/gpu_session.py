"""Reading a GPU session's output back on a CPU (scripts/gpu_session.sh, then scripts/gpu_post.py).

The session packs its results into a few archives (the device tool brings back at most 8 files);
these helpers unpack them, merge the trained-policy timing of every checkpoint into one benchmark
file, make the tables the docs show (trained rows beside the stand-in ones) and replace a marked
section of a docs page, so that re-running the post-processing rewrites its own rows and nothing else.
"""
from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["unpack", "merge_timing", "trained_rows", "benchmarks_table", "readme_table", "replace_section"]


def unpack(out_dir: str | Path, dest: str | Path) -> dict:
    """Extract the session's archives (results, one per shipped checkpoint) into ``dest``; its manifest."""
    out_dir, dest = Path(out_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for archive in sorted(out_dir.glob("*.tar.gz")):
        sub = dest / "checkpoints" if archive.name.startswith("checkpoint-") else dest
        with tarfile.open(archive) as tar:
            tar.extractall(sub, filter="data")
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not a GPU session's output (scripts/gpu_session.sh OUT_DIR writes it)")
    return json.loads(manifest.read_text())


def merge_timing(timing_dir: str | Path) -> dict:
    """Every checkpoint's bench_latency JSON in one: ``{"meta", "rows", "row_cost": {model: curve}}``."""
    merged: dict[str, Any] = {"meta": {}, "rows": [], "row_cost": {}, "checkpoints": {}}
    for path in sorted(Path(timing_dir).glob("*.json")):
        data = json.loads(path.read_text())
        rows = data.get("rows", [])
        if not rows:
            continue
        model = rows[0]["model"]
        merged["meta"].setdefault("device_description", data["meta"].get("device_description"))
        merged["rows"] += [{**r, "checkpoint": data["meta"].get("checkpoint"), "conditioning": data["meta"].get("conditioning")}
                           for r in rows]
        merged["row_cost"][model] = data["meta"].get("row_cost", [])
        merged["checkpoints"][model] = data["meta"].get("checkpoint")
    return merged


def _row(rows: Sequence[Mapping], model: str, batch: int, variant: str, sampler: str) -> Mapping | None:
    return next((r for r in rows if (r["model"], r["batch"], r["variant"], r["sampler"]) == (model, batch, variant, sampler)), None)


def trained_rows(merged: Mapping, variant: str) -> list[dict]:
    """Per (model, batch): the DDPM-100, DDIM-10 and every ASD / draft-tree row of ``variant``."""
    out = []
    keys = sorted({(r["model"], r["batch"]) for r in merged["rows"] if r["variant"] == variant}, key=lambda k: (k[1], k[0]))
    for model, batch in keys:
        rows = [r for r in merged["rows"] if (r["model"], r["batch"], r["variant"]) == (model, batch, variant)]
        out.append({"model": model, "batch": batch, "ddpm": _row(rows, model, batch, variant, "ddpm-100"),
                    "ddim": _row(rows, model, batch, variant, "ddim-10"),
                    "fast": [r for r in rows if r["method"] not in ("ddpm", "ddim", "paradigms")]})
    return out


def _ms(row: Mapping | None) -> str:
    return "-" if row is None else f"{row['median_ms']:.1f}"


def _fast_cell(row: Mapping) -> str:
    accept = f", accept {row['acceptance_rate']:.2f}" if row.get("acceptance_rate") is not None else ""
    speed = f"{row['speedup_vs_ddpm']:.2f}x, " if row.get("speedup_vs_ddpm") else ""
    return f"{row['sampler']}: {row['median_ms']:.1f} ({speed}{row['sequential_calls']:.1f} calls{accept})"


def benchmarks_table(merged: Mapping, variant: str) -> str:
    """docs/benchmarks.md's trained rows: every checkpoint at each batch size, DDPM-100 / ASD / DDIM-10."""
    lines = ["| trained policy | B | DDPM-100 ms | exact fast samplers: ms (speedup, sequential calls, acceptance) | DDIM-10 ms (speedup) |",
             "|---|---|---|---|---|"]
    for t in trained_rows(merged, variant):
        ddim = t["ddim"]
        ddim_cell = "-" if ddim is None else f"{ddim['median_ms']:.1f} ({ddim['speedup_vs_ddpm'] or 0:.2f}x)"
        fast = "; ".join(_fast_cell(r) for r in t["fast"]) or "-"
        lines.append(f"| {t['model']} (trained) | {t['batch']} | {_ms(t['ddpm'])} | {fast} | {ddim_cell} |")
    return "\n".join(lines)


def readme_table(merged: Mapping, variant: str, batch: int = 1) -> str:
    """The README's "What ASD buys" rows of the trained policies: batch 1, the best exact fast sampler."""
    lines = ["| trained policy | DDPM-100 | best ASD (sequential calls) | vs DDPM-100 | DDIM-10 (not exact) |",
             "|---|---|---|---|---|"]
    for t in trained_rows(merged, variant):
        if t["batch"] != batch or t["ddpm"] is None or not t["fast"]:
            continue
        best = min(t["fast"], key=lambda r: r["median_ms"])
        ddim = "-" if t["ddim"] is None else f"{t['ddim']['median_ms']:.1f} ms ({t['ddim']['speedup_vs_ddpm'] or 0:.1f}x)"
        lines.append(f"| {t['model']} (trained) | {t['ddpm']['median_ms']:.1f} ms | {best['sampler']}: {best['median_ms']:.1f} ms "
                     f"({best['sequential_calls']:.1f}) | **{best['speedup_vs_ddpm'] or 0:.2f}x** | {ddim} |")
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- name:begin -->`` and ``<!-- name:end -->`` replaced by
    ``body`` (the markers appended at the end when the page has none yet)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"
