"""Latency benchmark: ASD against sequential DDPM, DDIM and ParaDiGMS, eager and CUDA-graph captured.

For the `chi`-size U-Net (or a checkpoint's network), batch sizes 1, 8 and 28: median and p95
chunk latency (CUDA events on a GPU), sequential calls, NFE, speedup vs DDPM-100 under the same
optimisation, and the overhead ratio latency / (sequential calls x one batched forward).
Two models: the network with random weights, and the network's cost with the exact mixture
denoiser's answers ("exact@network"), so acceptance is that of a perfectly trained denoiser.
ParaDiGMS (approximate) runs with window 16 and tolerance 0.1; it has no graph-captured variant.

    python scripts/bench_latency.py --size chi --batch 1 8 28 --json docs/bench/latency-gpu.json --markdown docs/bench/latency-gpu.md

A trained policy (--checkpoint) is best timed on its own conditioning: --save-cond records the
network's conditioning rows at held-out starts of its task (needs the task's simulator; a camera
policy's rows hold its image features), --cond replays them where the simulator is absent (a GPU
machine), so acceptance and calls per chunk are the policy's own. --row-cost adds the network's
cost against rows per call.

    python scripts/bench_latency.py --checkpoint checkpoints/lift --save-cond cond/lift.safetensors
    python scripts/bench_latency.py --checkpoint checkpoints/lift --cond cond/lift.safetensors --batch 1 16 --L 16 32 --anchors reuse --models random
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from asd_policy.bench.harness import (
    Case,
    ExactAnswersAtNetworkCost,
    add_grid_arguments,
    analytic_chunk_model,
    bench_schedule,
    default_cases,
    describe_machine,
    markdown_table,
    policy_conditions,
    row_cost_curve,
    run_grid,
    tree_presets,
    write_results,
)
from asd_policy.policy.unet import build_unet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, size="chi", batch=[1, 8, 28], action_dim=10, obs_dim=20, repeats=10)
    # --action-dim 10: robomimic's 7-D pose action padded like a 2-arm task; any width works
    parser.add_argument("--checkpoint", help="time a trained policy's network instead (its dims override the ones above)")
    parser.add_argument("--anchors", nargs="+", default=["reuse", "fresh"])
    parser.add_argument("--variants", nargs="+", default=None, help="eager and/or graph (default: both on CUDA, eager on CPU)")
    parser.add_argument("--models", nargs="+", default=["random", "exact"], choices=["random", "exact"])
    parser.add_argument("--bf16", action="store_true", help="run the network under bf16 autocast in the graph variant")
    parser.add_argument("--presets", nargs="*", default=None,
                        help="sampler presets timed as they are set (default: the draft-tree presets that exist)")
    parser.add_argument("--cond", help="conditioning rows recorded by --save-cond (a trained policy's own)")
    parser.add_argument("--save-cond", help="record --checkpoint's conditioning rows at held-out starts of its task, then stop")
    parser.add_argument("--task", help="the task of a checkpoint that records none (LeRobot), for --save-cond")
    parser.add_argument("--cond-rows", type=int, default=16, help="rows --save-cond records (half resets, half rollout states)")
    parser.add_argument("--row-cost", type=int, nargs="*", default=[], help="rows per call for the network's cost curve")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants or (["eager", "graph"] if device.type == "cuda" else ["eager"])
    schedule = bench_schedule()
    from safetensors.torch import load_file, save_file
    if args.checkpoint:
        from asd_policy.policy.checkpoint import load_policy

        policy = load_policy(args.checkpoint)
        # named after the checkpoint's folder: reach_around and reach_around_image are both reach_around's
        network, name = policy.model, f"{Path(args.checkpoint).resolve().name}-{policy.config.unet.get('size') or 'custom'}"
        args.horizon, args.action_dim = policy.config.horizon, policy.config.action_dim
        cond_dim = policy.model.config.cond_dim  # a camera policy's holds its image features
        schedule = policy.schedule
        if args.save_cond:
            rows = policy_conditions(policy, args.task, args.cond_rows)
            save_file({"rows": rows.contiguous()}, args.save_cond)  # safetensors: nothing to unpickle
            print(f"{args.save_cond}: {tuple(rows.shape)} conditioning rows of {args.checkpoint}")
            return
    else:
        cond_dim = 2 * args.obs_dim
        network, name = build_unet(args.size, args.action_dim, cond_dim), f"unet-{args.size}"
    if args.save_cond:
        parser.error("--save-cond needs --checkpoint")
    conds = load_file(args.cond)["rows"] if args.cond else None
    if conds is not None and conds.shape[1] != cond_dim:
        parser.error(f"--cond {args.cond} holds rows of width {conds.shape[1]}; this network takes {cond_dim}")
    models = {}
    if "random" in args.models:
        models[f"{name}{'' if args.checkpoint else '-random'}"] = (network, cond_dim)
    if "exact" in args.models:
        exact = analytic_chunk_model(schedule, args.horizon, args.action_dim)
        models[f"exact@{name}"] = (ExactAnswersAtNetworkCost(network, exact), cond_dim)
    presets = tuple(tree_presets() if args.presets is None else args.presets)
    cases = default_cases(tuple(args.L), tuple(args.anchors), paradigms=True, presets=presets)
    cases.insert(1, Case(cases[0].sampler, capture="chunk"))
    paradigms = next(c for c in cases if c.method == "paradigms").sampler.options

    print(f"device: {describe_machine(device)}", flush=True)
    start = time.time()
    meta = {"device_description": describe_machine(device), "command": "python " + " ".join(sys.argv), "script": "bench_latency",
            "bf16": args.bf16, "paradigms_tolerance": paradigms["tolerance"], "paradigms_window": paradigms["window"],
            "checkpoint": args.checkpoint, "conditioning": args.cond or "random"}
    if args.row_cost:  # the network alone, eager and (on CUDA) graph-replayed
        meta["row_cost"] = [r for graph in sorted({v == "graph" for v in variants})
                            for r in row_cost_curve(network, args.horizon, args.action_dim, cond_dim, args.row_cost, device, graph)]
        for r in meta["row_cost"]:
            print(f"row cost: {r['rows']} rows, {'graph' if r['graph'] else 'eager'}: {r['forward_ms']:.2f} ms", flush=True)
    rows = []
    for batch in args.batch:  # smallest first; results are written after each batch size, so a cut-off run keeps them
        for name, model in models.items():
            rows += run_grid({name: model}, schedule, args.horizon, args.action_dim, [batch], cases, variants, device, args.repeats,
                             autocast_dtype=torch.bfloat16 if args.bf16 else None, progress=lambda line: print(line, flush=True),
                             conds={name: conds} if conds is not None else None)
            write_results(rows, meta, args.json, args.markdown)
    print(f"\n{len(rows)} cells in {time.time() - start:.0f}s\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
