"""Markdown reports from evaluation results (``results.json`` written by ``scripts/eval.py``).

    python scripts/report.py outputs/eval/reach_around/<run> [more runs...] --out docs/results.md

copies each run's success-vs-latency plot next to the markdown file and writes one section per run:
the command, the machine, and the per-sampler table.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from asd_policy.evaluation.tables import fmt, markdown_table, page_columns

__all__ = ["markdown_table", "markdown_section", "write_report"]


def _short_path(p: Any) -> Any:
    if not isinstance(p, str):
        return p
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return p
    return p if rel.startswith("..") else rel


def markdown_section(results: Mapping[str, Any], plot: str | None = None) -> str:
    parts = [f"## {results['task']}", ""]
    if results.get("command"):
        parts += ["```bash", results["command"], "```", ""]
    parts.append(
        f"Checkpoint `{_short_path(results.get('checkpoint'))}`, device {results.get('device')} "
        f"({results.get('device_name', '?')}), torch {results.get('torch', '?')}, seed {results.get('seed')}, "
        f"{results.get('episodes_requested')} episodes per sampler (env seeds seed..seed+N-1, the same for "
        f"every sampler), wall time {fmt(results.get('wall_s'), '.0f')} s"
        + ("" if results.get("complete", True) else " — **incomplete run**") + ".")
    parts += ["", markdown_table(results, page_columns(results)), ""]
    if results.get("fidelity"):
        parts += [_fidelity_note(results["fidelity"]), ""]
    if plot:
        parts += [f"![success vs latency, {results['task']}]({plot})", ""]
    return "\n".join(parts)


def _fidelity_note(f: Mapping[str, Any]) -> str:
    """How the fidelity columns were measured (scripts/eval.py fidelity=true)."""
    return (f"Fidelity: {f['chunks']} chunks per sampler at each of {len(f['observations'])} observations from the "
            f"{f['source']} ({'; '.join(f['observations'])}), against {f['reference']}; distance: mean energy "
            f"distance of whole chunks (null: a second DDPM-100 set); p: permutation p-value ({f['permutations']} "
            f"permutations), Bonferroni over observations x statistics ({', '.join(f['statistics'])}); "
            f"see docs/exactness.md.")


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str = "Results",
                 notes: str | None = None) -> Path:
    """Markdown for several eval runs. A run kept under the report's folder (e.g. docs/results/<task>/)
    has its plot linked where it is; other runs' plots are copied to ``<out dir>/results/<task>_<run>.png``."""
    out = Path(out)
    img_dir = out.parent / "results"
    page_dir = out.parent.resolve()
    sections = []
    for d in run_dirs:
        d = Path(d)
        res_path = d / "results.json" if d.is_dir() else d
        results = json.loads(res_path.read_text())
        plot_src = res_path.parent / "success_vs_latency.png"
        rel = None
        if plot_src.exists():
            plot_abs = plot_src.resolve()
            if plot_abs.is_relative_to(page_dir):
                rel = str(plot_abs.relative_to(page_dir))
            else:
                img_dir.mkdir(parents=True, exist_ok=True)
                run = res_path.parent.name
                dst = img_dir / (f"{results['task']}.png" if run == results["task"] else f"{results['task']}_{run}.png")
                shutil.copyfile(plot_src, dst)
                rel = str(dst.relative_to(out.parent))
        sections.append(markdown_section(results, rel))
    intro = (
        f"# {title}\n\nSuccess rate (Wilson 95% interval) and chunk inference latency of each sampler on "
        "the same seeded episodes, from `scripts/eval.py` (see docs/evaluation.md for the definitions). "
        "Latency is device-synchronised per action chunk; sequential calls are the model invocations "
        "made one after another per chunk; NFE the single-sample network evaluations.\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    text = intro + "\n" + "\n".join(sections)
    if notes:
        text += "\n" + notes.strip() + "\n"
    out.write_text(text)
    return out
