#!/usr/bin/env python
"""Draft trees against one-draft ASD on the shipped policies: sequential calls per chunk (batch-1
semantics: a chain's rounds), rows per round, where the rejections happen, and the tail's cost.

Observations along episodes (exactness.observations_for: resets, then the states after each chunk
of a DDPM-100 rollout); at each, ``--chunks`` chains drawn in one batched call (each chain has its
own tree and rounds, so its calls are those of a batch-1 call). One-draft ASD runs as the chain
tree (draw for draw the same sampler) so that it reports per-step counts too. Tree profiles:
``flat`` (one-draft rejection 0.15 at every step) and ``measured`` (the per-step one-draft
rejection rate of this run's chain L = 32 draws, the tail included).

    python scripts/bench_tree.py --json docs/bench/tree-cpu.json --markdown /tmp/tree.md
    python scripts/bench_tree.py --tasks lift --budgets 64 --chunks 2 --resets 1 --rollout-states 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

import asd_policy.checks.exactness as ex
from asd_policy.control.tasks import TaskConfig
from asd_policy.sampling.row_budget import per_call_ms

TASKS = ["reach_around", "fetch_push", "lift", "can", "square"]
TAIL = 10  # rounds that start at t < 10: the tail


def draw_stats(policy, obs: np.ndarray, n: int, seed: int, **options) -> dict:
    """n chains from one observation in one call: their rounds, rows, and the tree counters."""
    hist = torch.as_tensor(obs, dtype=torch.float32)[None].expand(n, -1, -1)
    g = torch.Generator().manual_seed(seed)
    stats = policy.predict_action(hist, generator=g, **options).stats
    tree = options.get("method") == "asd_tree"
    return {"calls": stats.rounds.tolist() if tree else [stats.sequential_calls] * n,
            "nfe": stats.nfe, "rounds": int(stats.rounds.sum()) if tree else stats.sequential_calls * n,
            "child_tried": stats.child_tried or [], "child_accepted": stats.child_accepted or [],
            "step_checked": stats.step_checked or [], "step_rejected": stats.step_rejected or [],
            "step_rounds": stats.step_rounds or [], "depth_checked": stats.depth_checked or [],
            "depth_rejected": stats.depth_rejected or []}


def add(total: list, part: list) -> list:
    total.extend([0] * (len(part) - len(total)))
    for i, v in enumerate(part):
        total[i] += v
    return total


def run_case(policy, observations, n: int, seed: int, **options) -> dict:
    calls, nfe, rounds = [], 0, 0
    sums = {k: [] for k in ("child_tried", "child_accepted", "step_checked", "step_rejected", "step_rounds",
                            "depth_checked", "depth_rejected")}
    for i, (_, obs) in enumerate(observations):
        s = draw_stats(policy, obs, n, seed + 1000 * i, **options)
        calls += s["calls"]
        nfe, rounds = nfe + s["nfe"], rounds + s["rounds"]
        for k in sums:
            add(sums[k], s[k])
    chunks = len(calls)
    return {"calls": statistics.mean(calls), "calls_sd": statistics.pstdev(calls), "chunks": chunks,
            "rows_per_round": nfe / rounds, "tail_rounds": sum(sums["step_rounds"][:TAIL]) / chunks if sums["step_rounds"] else None,
            **sums}


def measured_profile(chain: dict, floor: float = 0.02) -> tuple[float, ...]:
    """Per-step one-draft rejection rate of a chain run (first children tested and failed)."""
    return tuple(round(max(floor, min(0.95, r / c)), 3) if c else floor
                 for r, c in zip(chain["step_rejected"], chain["step_checked"]))


def bench_task(task: str, args) -> dict:
    policy = ex.load_checked(f"checkpoints/{task}")
    observations = ex.task_observations(policy, TaskConfig(name=task), args.resets, args.rollout_states)
    rows = {"ddim10": run_case(policy, observations[:1], args.chunks, 1, method="ddim", num_inference_steps=10)}
    def case(key: str, seed: int, **options) -> dict:
        rows[key] = run_case(policy, observations, args.chunks, seed, method="asd_tree", **options)
        print(f"{task} {key}: {rows[key]['calls']:.2f} calls, {rows[key]['rows_per_round']:.0f} rows/round, "
              f"{rows[key]['tail_rounds']:.2f} tail rounds", file=sys.stderr, flush=True)
        return rows[key]

    for L in args.L:  # one-draft ASD (the chain tree draws what sample_asd draws)
        case(f"chain L{L}", 2, row_budget=L, tree="chain")
    profiles = {"flat": 0.15, "measured": measured_profile(rows.get("chain L32") or rows[f"chain L{args.L[-1]}"])}
    for R in args.budgets:
        for name in args.profiles:
            case(f"tree {R} {name}", 3, row_budget=R, tree_profile=profiles[name])
    return {"observations": [label for label, _ in observations], "profile": profiles["measured"], "samplers": rows}


def row_cost_curve(path: str) -> list[tuple[float, float]]:
    """(rows per call, ms per call) of the `chi` stand-in network on the H100 (graph variant,
    random weights, reuse ASD and DDPM rows of bench_latency's JSON): the forward time measured
    at each row count."""
    points = {}
    data = json.loads(open(path).read())
    for r in data["rows"] if isinstance(data, dict) else data:
        if r["variant"] == "graph" and r["model"] == "unet-chi-random" and r.get("forward_ms") and r["kwargs"].get("anchor") != "fresh":
            rows = r["batch"] * r["kwargs"].get("speculation_length", 1)
            points[rows] = r["forward_ms"]
    return sorted(points.items())


def time_auto(task: str, args) -> dict:
    """Batch-1 chunk ms (median over the observations x --chunks seeds, samplers interleaved) of
    row_budget='auto' against one-draft ASD at L = 4, 8, 16, 32, in this process."""
    policy = ex.load_checked(f"checkpoints/{task}")
    observations = ex.task_observations(policy, TaskConfig(name=task), args.resets, args.rollout_states)
    samplers = {f"asd L{L}": {"method": "asd", "speculation_length": L} for L in (4, 8, 16, 32)}
    samplers["asd_tree auto"] = {"method": "asd_tree", "row_budget": "auto"}
    hist0 = torch.as_tensor(observations[0][1], dtype=torch.float32)[None]
    policy.predict_action(hist0, method="asd_tree", row_budget="auto")  # times the row-cost curve once
    ms = {name: [] for name in samplers}
    rows = {}
    for i, (_, obs) in enumerate(observations):
        hist = torch.as_tensor(obs, dtype=torch.float32)[None]
        for k in range(args.chunks):
            for name, options in samplers.items():
                start = time.perf_counter()
                out = policy.predict_action(hist, generator=torch.Generator().manual_seed(1000 * i + k), **options)
                ms[name].append((time.perf_counter() - start) * 1e3)
                rows[name] = out.stats.rows_per_round
    return {name: {"median_ms": statistics.median(v), "rows_per_round_last": rows[name]} for name, v in ms.items()}


def markdown(results: dict, curve: list[tuple[float, float]] | None = None, overhead: float = 1.15) -> str:
    """Calls per chunk (rows per round, rounds started in the tail t < 10) per task; with a row-cost
    curve, the predicted H100 chunk ms = calls x forward(rows per round) x the measured ASD graph
    overhead (1.15: median of bench/latency-h100.json's reuse ASD graph rows)."""
    tasks = list(results["tasks"])
    names = list(next(iter(results["tasks"].values()))["samplers"])
    unit = "calls (rows/round, tail rounds" + (", H100 est. ms)" if curve else ")")
    lines = ["| sampler | " + " | ".join(f"{t}: {unit}" for t in tasks) + " |", "|" + " --- |" * (len(tasks) + 1)]
    for name in names:
        cells = []
        for t in tasks:
            r = results["tasks"][t]["samplers"][name]
            tail = "" if r["tail_rounds"] is None else f", {r['tail_rounds']:.1f}"
            est = "" if curve is None else f", {r['calls'] * per_call_ms(curve, r['rows_per_round']) * overhead:.0f}"
            cells.append(f"{r['calls']:.2f} ({r['rows_per_round']:.0f}{tail}{est})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def where_rejections_are(results: dict, names: list[str], ranks: int = 5) -> str:
    """Per task and sampler: acceptance of the k-th child when tried (k = 1..ranks), and the share of
    tested nodes whose every child failed in three bands of the schedule (tail t < 10, 10-49, 50-99)."""
    bands = [(0, TAIL), (TAIL, 50), (50, 10**6)]
    head = (["task", "sampler"] + [f"child {k + 1} accepted" for k in range(ranks)]
            + [f"rejected at t in [{a}, {min(b, 100)})" for a, b in bands] + ["tail rounds / chunk"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for task, res in results["tasks"].items():
        for name in names:
            r = res["samplers"].get(name)
            if r is None:
                continue
            acc = [f"{a / t:.2f} ({t})" if k < len(r["child_tried"]) and (t := r["child_tried"][k]) else "-"
                   for k, a in zip(range(ranks), r["child_accepted"] + [0] * ranks)]
            rej = []
            for a, b in bands:
                c, j = sum(r["step_checked"][a:b]), sum(r["step_rejected"][a:b])
                rej.append(f"{j / c:.3f}" if c else "-")
            lines.append(f"| {task} | {name} | " + " | ".join(acc + rej) + f" | {r['tail_rounds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--L", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--profiles", nargs="+", default=["flat", "measured"], choices=["flat", "measured"])
    ap.add_argument("--resets", type=int, default=2)
    ap.add_argument("--rollout-states", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=4, help="chains per observation (drawn in one batched call)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--gpu-costs", default="docs/bench/latency-h100.json",
                    help="bench_latency JSON of an H100 run: adds the predicted H100 chunk ms ('' for none)")
    ap.add_argument("--table", metavar="JSON", help="only print the tables of a result written by --json")
    ap.add_argument("--detail", nargs="+", default=["chain L32", "tree 256 measured"],
                    help="samplers of the second table (acceptance per child rank, rejections per band of steps)")
    ap.add_argument("--time-auto", action="store_true", help="only time row_budget='auto' against asd L4..32 at batch 1")
    args = ap.parse_args(argv)
    if args.time_auto:
        torch.set_num_threads(1)
        for task in args.tasks:
            result = time_auto(task, args)
            print(task, " ".join(f"{n}: {r['median_ms']:.0f} ms" for n, r in result.items()),
                  f"(auto chose {result['asd_tree auto']['rows_per_round_last']:.0f} rows/round)", flush=True)
        return
    curve = row_cost_curve(args.gpu_costs) if args.gpu_costs else None
    if args.table:
        results = json.loads(open(args.table).read())
        print(markdown(results, curve))
        print()
        print(where_rejections_are(results, args.detail))
        return
    torch.set_num_threads(1)
    start = time.time()
    results = {"command": "python " + " ".join(sys.argv), "tasks": {}}
    for task in args.tasks:
        results["tasks"][task] = bench_task(task, args)
    results["wall_s"] = time.time() - start
    table = markdown(results, curve) + "\n\n" + where_rejections_are(results, args.detail)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
