"""The one summary-table writer: per-sampler cells from a results dict, rendered as the eval's
text table, the results pages' markdown (docs/results*.md) and the model cards' markdown.

A table is a list of columns ``(cell, header)``; :data:`CELLS` says how each cell is written.
A new report column is a new entry in :data:`CELLS` plus its place in the column lists.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

__all__ = ["fmt", "CELLS", "TEXT_COLUMNS", "PAGE_COLUMNS", "CARD_COLUMNS", "FIDELITY_COLUMNS", "summary_rows",
           "page_columns", "text_table", "markdown_table", "format_table"]

Summary = Mapping[str, Any]
Column = tuple[str, str]


def fmt(v: Any, spec: str = ".1f") -> str:
    """``v`` formatted, or ``-`` when missing."""
    return "-" if v is None else format(v, spec)


def _ci(s: Summary) -> str:
    lo, hi = s["success_ci95"]
    return f"[{lo:.2f}, {hi:.2f}]"


def _outcomes(s: Summary, key_sep: str, count_sep: str, value_sep: str) -> str:
    return "; ".join(f"{k}{key_sep}" + value_sep.join(f"{v}{count_sep}{n}" for v, n in c.items())
                     for k, c in (s.get("outcomes") or {}).items()) or "-"


def _realtime(s: Summary) -> str:
    rt = s.get("realtime")
    if not rt:
        return "-"
    text = f"misses {rt['deadline_misses']} skipped {rt['skipped_actions']} "
    if rt.get("clock", "wall") == "wall":
        text += f"rate {fmt(rt['achieved_hz_mean'])} Hz"
    else:
        text += f"stale {rt['stale_chunks']} delay {fmt(rt['delay_ticks_mean'])} ticks"
    if rt.get("on_miss", "hold") == "extend":
        text += f" extended {rt.get('extended_actions', 0)}"
    if "boundary_jump_mean" in rt:
        text += (f" | {rt.get('clock', 'wall')} {rt.get('transition', 'switch')}: jump at switch "
                 f"{fmt(rt['boundary_jump_mean'], '.3f')} within {fmt(rt['within_chunk_jump_mean'], '.3f')}")
    return text


def _fidelity_distance(s: Summary) -> str:
    """Energy distance to DDPM-100 (the DDPM-vs-DDPM null in brackets); the reference says so."""
    f = s.get("fidelity")
    if not f:
        return "-"
    if f.get("reference"):
        return f"(reference; null {f['null_distance']:.4f})"
    return f"{f['distance']:.4f} (null {f['null_distance']:.4f})"


def _fidelity_p(s: Summary) -> str:
    f = s.get("fidelity")
    if not f:
        return "-"
    return f"(null {f['null_p_value']:.3g})" if f.get("reference") else f"{f['p_value']:.3g}"


def _latency(q: str) -> Callable[[str, Summary], str]:
    return lambda name, s: fmt(s["chunk_latency_ms"][q])


#: cell name -> (sampler name, its summary) -> text.
CELLS: dict[str, Callable[[str, Summary], str]] = {
    "sampler": lambda name, s: name,
    "settings": lambda name, s: ", ".join(f"{k}={v}" for k, v in (s.get("sampler") or {}).items()),
    "episodes": lambda name, s: str(s["episodes"]),
    "success": lambda name, s: fmt(s["success_rate"], ".2f"),
    "success_percent": lambda name, s: fmt(s["success_rate"], ".0%"),
    "ci95": lambda name, s: _ci(s),
    "success_ci95": lambda name, s: f"{fmt(s['success_rate'], '.2f')} {_ci(s)}",
    "latency_mean": _latency("mean"),
    "latency_p50": _latency("p50"),
    "latency_p95": _latency("p95"),
    "latency_p99": _latency("p99"),
    "ms_per_action": lambda name, s: fmt((s.get("action_latency_ms") or {}).get("mean")),
    "encode_mean": lambda name, s: fmt((s.get("encode_ms") or {}).get("mean")),
    "sampler_mean": lambda name, s: fmt((s.get("sampler_ms") or {}).get("mean")),
    "sequential_calls": lambda name, s: fmt(s["sequential_calls_mean"]),
    "nfe": lambda name, s: fmt(s["nfe_mean"], ".0f"),
    # rows verified per sequential call: 1 for DDPM/DDIM, about L for ASD, the row budget for a tree
    "rows_per_call": lambda name, s: fmt(_ratio(s["nfe_mean"], s["sequential_calls_mean"]), ".1f"),
    "speedup": lambda name, s: "-" if s["speedup_vs_ddpm"] is None else f"{s['speedup_vs_ddpm']:.2f}x",
    "realtime": lambda name, s: _realtime(s),
    "outcomes": lambda name, s: _outcomes(s, " ", ":", " "),
    "outcomes_markdown": lambda name, s: _outcomes(s, ": ", ": ", ", "),
    "fidelity_distance": lambda name, s: _fidelity_distance(s),
    "fidelity_p": lambda name, s: _fidelity_p(s),
}

#: fidelity=true: the distance of each sampler's chunks to DDPM-100's and the permutation p-value.
FIDELITY_COLUMNS: list[Column] = [("fidelity_distance", "distance to DDPM-100 (null)"),
                                  ("fidelity_p", "p vs DDPM-100")]

def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


#: A camera policy's chunk latency split: the image encoder (once per chunk) and the sampler.
ENCODER_COLUMNS: list[Column] = [("encode_mean", "encoder ms"), ("sampler_mean", "sampler ms")]

#: The eval's printed table; a real-time and an outcomes column follow when any sampler has them.
TEXT_COLUMNS: list[Column] = [
    ("sampler", "sampler"), ("episodes", "episodes"), ("success", "success"), ("ci95", "95% CI"),
    ("latency_mean", "chunk ms mean"), ("latency_p50", "p50"), ("latency_p95", "p95"),
    ("latency_p99", "p99"), ("ms_per_action", "ms/action"), ("sequential_calls", "seq calls"),
    ("nfe", "NFE"), ("rows_per_call", "rows/call"), ("speedup", "speedup"),
]
_TEXT_OPTIONAL: list[tuple[str, list[Column]]] = [("encode_ms", ENCODER_COLUMNS),
                                                  ("realtime", [("realtime", "real-time")]),
                                                  ("fidelity", FIDELITY_COLUMNS),
                                                  ("outcomes", [("outcomes", "successes by outcome")])]
#: docs/results*.md (scripts/report.py).
PAGE_COLUMNS: list[Column] = [
    ("sampler", "sampler"), ("settings", "settings"), ("episodes", "episodes"),
    ("success_ci95", "success (95% CI)"), ("latency_mean", "chunk latency ms: mean"),
    ("latency_p50", "p50"), ("latency_p95", "p95"), ("latency_p99", "p99"),
    ("sequential_calls", "seq. calls / chunk"), ("nfe", "NFE / chunk"),
    ("speedup", "speedup vs DDPM"), ("outcomes_markdown", "successes by outcome"),
]
#: checkpoints/<task>/README.md (scripts/model_card.py).
CARD_COLUMNS: list[Column] = [
    ("sampler", "sampler"), ("episodes", "episodes"), ("success_percent", "success"),
    ("ci95", "95% interval (Wilson)"), ("sequential_calls", "sequential calls / chunk"), ("nfe", "NFE / chunk"),
]


def page_columns(results: Mapping[str, Any]) -> list[Column]:
    """The results pages' columns, with the encoder / sampler split for a camera policy and the
    fidelity columns when the run measured fidelity."""
    return (PAGE_COLUMNS + (ENCODER_COLUMNS if _has(results, "encode_ms") else [])
            + (FIDELITY_COLUMNS if _has(results, "fidelity") else []))


def _has(results: Mapping[str, Any], key: str) -> bool:
    return any(s.get(key) for s in results["samplers"].values())


def summary_rows(results: Mapping[str, Any], columns: Sequence[Column]) -> tuple[list[str], list[list[str]]]:
    """(headers, one row of cells per sampler) of ``results["samplers"]``."""
    heads = [head for _, head in columns]
    rows = [[CELLS[cell](name, s) for cell, _ in columns] for name, s in results["samplers"].items()]
    return heads, rows


def text_table(results: Mapping[str, Any], columns: Sequence[Column]) -> str:
    """Fixed-width columns: the first left-aligned, the rest right-aligned."""
    heads, rows = summary_rows(results, columns)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(results: Mapping[str, Any], columns: Sequence[Column] = PAGE_COLUMNS) -> str:
    """A markdown table (the results pages' columns unless ``columns`` says otherwise)."""
    heads, rows = summary_rows(results, columns)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def format_table(results: Mapping[str, Any]) -> str:
    """The per-sampler summary as the fixed-width text table ``scripts/eval.py`` prints."""
    columns = list(TEXT_COLUMNS)
    for key, optional in _TEXT_OPTIONAL:
        if _has(results, key):
            columns += optional
    title = f"task={results['task']}  checkpoint={results['checkpoint']}  device={results['device']}"
    if server := results.get("policy_server"):
        title = f"task={results['task']}  policy_server={server['url']} ({server.get('device')}; chunk ms measured here, network included)"
    text = title + "\n" + text_table(results, columns)
    f = results.get("fidelity")
    if f:
        v = f["verdict"]
        text += (f"\nfidelity: {f['chunks']} chunks per sampler at {len(f['observations'])} observations from the "
                 f"{f['source']}; p: Bonferroni permutation p-value; ASD "
                 + ("indistinguishable from DDPM-100" if v["exact"] else f"FAILED: {', '.join(v['failed'])}")
                 + f" (threshold {v['threshold']:.3g})")
    return text
