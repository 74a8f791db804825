#!/usr/bin/env python
"""Write the real-time results page from real-time eval runs (realtime=sim or wall).

    python scripts/report_realtime.py docs/results/realtime --out docs/results-realtime.md --intro findings.md --notes notes.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asd_policy.reports.realtime import load_runs, write_realtime_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", help="folders holding real-time eval runs (searched recursively)")
    ap.add_argument("--out", default="docs/results-realtime.md")
    ap.add_argument("--title", default="Real-time results: success against control rate")
    ap.add_argument("--intro", help="a markdown file placed under the title (the findings)")
    ap.add_argument("--notes", help="a markdown file appended at the end")
    args = ap.parse_args()
    if not load_runs(args.roots):
        print(f"error: no real-time runs (results.json with run_meta.json, realtime set) under {' '.join(args.roots)}; "
              f"run e.g. python scripts/eval.py -m realtime=sim control_hz=5,10 hydra.sweep.dir=<root>", file=sys.stderr)
        sys.exit(2)
    notes = Path(args.notes).read_text() if args.notes else None
    intro = Path(args.intro).read_text() if args.intro else None
    print(write_realtime_report(args.roots, args.out, args.title, notes, intro))


if __name__ == "__main__":
    main()
