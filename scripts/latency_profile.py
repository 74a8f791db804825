#!/usr/bin/env python
"""Write a latency profile ({sampler: ms}) from an evaluation's results.json, or from the medians
of scripts/bench_latency.py's JSON (a GPU's trained-policy timing), to replay that machine's chunk
latency on the simulated clock anywhere (realtime=sim latency_profile=...).

    python scripts/latency_profile.py outputs/eval/lift/<time>/results.json --out my-gpu.json
    python scripts/latency_profile.py docs/results/batch1/can/results.json --stat mean --out docs/bench/latency-profile-cpu-can.json
    python scripts/latency_profile.py latency-lift.json --model lift-small --checkpoint checkpoints/lift --out latency-profile-h100-lift.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asd_policy.control.latency import (
    LATENCY_STATS,
    profile_from_bench,
    profile_from_results,
)
from asd_policy.core.config import ConfigError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json of scripts/eval.py (batch 1, i.e. num_envs=1, for per-chunk latency)")
    ap.add_argument("--stat", default="mean", choices=LATENCY_STATS, help="which summary of each sampler's chunk latency")
    ap.add_argument("--out", help="where to write the profile (default: print it)")
    bench = ap.add_argument_group("from bench_latency.py's JSON (its medians)")
    bench.add_argument("--model", help="the timed model's name (default: the first)")
    bench.add_argument("--variant", default="graph", help="graph (CUDA graphs) or eager")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--checkpoint", help="the policy, whose stored sampler the preset names resolve against")
    args = ap.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
        if "rows" in results:  # a benchmark, not an evaluation
            stored = None
            if args.checkpoint:
                from asd_policy.policy.checkpoint import read_metadata

                stored = read_metadata(args.checkpoint).get("config", {}).get("sampler")
            model = args.model or next((r["model"] for r in results["rows"]), None)
            profile = profile_from_bench(results, model, args.variant, args.batch, stored)
        else:
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
