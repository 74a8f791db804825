#!/usr/bin/env python
"""Write a latency profile ({sampler: ms}) from an evaluation's results.json, to replay that
machine's measured chunk latency on the simulated clock anywhere (realtime=sim latency_profile=...).

    python scripts/latency_profile.py outputs/eval/lift/<time>/results.json --out my-gpu.json
    python scripts/latency_profile.py docs/results/batch1/can/results.json --stat mean --out docs/bench/latency-profile-cpu-can.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asd_policy.config import ConfigError
from asd_policy.simclock import LATENCY_STATS, profile_from_results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json of scripts/eval.py (batch 1, i.e. num_envs=1, for per-chunk latency)")
    ap.add_argument("--stat", default="mean", choices=LATENCY_STATS, help="which summary of each sampler's chunk latency")
    ap.add_argument("--out", help="where to write the profile (default: print it)")
    args = ap.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
        profile = profile_from_results(results, args.stat)
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        print(f"error: {args.results}: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(profile, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
