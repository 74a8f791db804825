"""The real-time results page: runs found, grouped by task and latency source, tabled and plotted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from asd_policy.reports.realtime import group_runs, load_runs, write_realtime_report

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, name: str, hz: float, transition: str, source: str, success: float, jump: float,
         on_miss: str | None = None) -> None:
    d = root / name
    d.mkdir(parents=True)
    sampler = {"episodes": 10, "success_rate": success, "success_ci95": [success - 0.1, min(1.0, success + 0.1)],
               "chunk_latency_ms": {"mean": 100.0, "p50": 100.0, "p95": 110.0, "p99": 120.0},
               "realtime": {"delay_ticks_mean": hz / 10, "deadline_miss_rate": 0.0, "skipped_actions": 3,
                            "stale_chunks": 0, "boundary_jump_mean": jump, "within_chunk_jump_mean": 0.05,
                            "latency_model_ms": None if source == "measured" else 50.0,
                            "load_avg_1min": {"start": 1.5, "end": 1.0} if source == "measured" else None}}
    results = {"task": "toy", "samplers": {"asd": sampler}, "seed": 1000, "command": "python scripts/eval.py -m x",
               "device_name": "cpu", "torch": "2"}
    meta = {"realtime": "sim", "control_hz": hz, "transition": transition,
            "latency": {"asd": {"latency_source": source, "latency_model_ms": None}},
            **({"on_miss": on_miss} if on_miss else {})}
    (d / "results.json").write_text(json.dumps(results))
    (d / "run_meta.json").write_text(json.dumps(meta))


def test_page_has_a_table_and_two_plots_per_task_and_latency_source(tmp_path):
    root = tmp_path / "runs"
    _run(root, "a", 20, "inpaint", "measured", 0.9, 0.1)
    _run(root, "b", 10, "switch", "measured", 1.0, 0.3)
    _run(root, "c", 10, "switch", "latency_profile:p.json", 1.0, 0.2)
    _run(root, "d", 10, "switch", "latency_profile:p.json", 0.8, 0.2, on_miss="extend")
    (root / "sync").mkdir()
    (root / "sync" / "results.json").write_text("{}")  # no run_meta: not a real-time run, skipped
    runs = load_runs([root])
    groups = group_runs(runs)
    assert list(groups) == [("toy", "latency_profile:p.json"), ("toy", "measured")]
    assert [r["control_hz"] for r in groups[("toy", "measured")]] == [10.0, 20.0]
    assert [r["transition"] for r in groups[("toy", "latency_profile:p.json")]] == ["switch", "switch+extend"]
    page = write_realtime_report([root], tmp_path / "page.md", "Real time", notes="## Notes\n\nnone")
    text = page.read_text()
    assert text.count("| rate Hz |") == 2 and "| 20 | inpaint | asd | 10 | 0.90 [0.80, 1.00] |" in text and "| 0.100 | 0.050 | 1.5 |" in text
    assert "| 10 | switch+extend | asd | 10 | 0.80 [0.70, 0.90] |" in text
    # at a glance: one row per (task, latency, sampler, transition), every rate of the sweep in it
    assert "| toy | measured | asd | switch | 10 Hz **10/10** |" in text
    assert "| toy | measured | asd | inpaint | 20 Hz **9/10** |" in text
    assert "| toy | p | asd | switch+extend | 10 Hz **8/10** |" in text
    assert "fixed latency model (profile p.json)" in text and text.rstrip().endswith("none")
    assert len(list(root.rglob("success_vs_rate_*.png"))) == 2 and len(list(root.rglob("jump_vs_delay_*.png"))) == 2


def test_script_says_when_there_is_nothing_to_report(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "report_realtime.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: no real-time runs")
