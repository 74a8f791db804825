#!/usr/bin/env python
"""Write a markdown results page from eval runs.

    python scripts/report.py outputs/eval/reach_around/<run> [more runs...] --out docs/results.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asd_policy.reports.results import write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="eval run directories (or their results.json)")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--title", default="Results: success versus latency")
    ap.add_argument("--notes", help="a markdown file appended at the end")
    args = ap.parse_args()
    for r in args.runs:
        p = Path(r)
        if not (p / "results.json").exists() and not (p.is_file() and p.suffix == ".json"):
            print(f"error: no results.json in {r}", file=sys.stderr)
            sys.exit(2)
    notes = Path(args.notes).read_text() if args.notes else None
    print(write_report(args.runs, args.out, args.title, notes))


if __name__ == "__main__":
    main()
