"""Latency benchmark: ASD against sequential DDPM, DDIM and ParaDiGMS, eager and CUDA-graph captured.

For the `chi`-size U-Net (or a checkpoint's network), batch sizes 1, 8 and 28: median and p95
chunk latency (CUDA events on a GPU), sequential calls, NFE, speedup vs DDPM-100 under the same
optimisation, and the overhead ratio latency / (sequential calls x one batched forward).
Two models: the network with random weights, and the network's cost with the exact mixture
denoiser's answers ("exact@network"), so acceptance is that of a perfectly trained denoiser.
ParaDiGMS (approximate) runs with window 16 and tolerance 0.1; it has no graph-captured variant.

    python scripts/bench_latency.py --size chi --batch 1 8 28 --json docs/bench/latency-gpu.json --markdown docs/bench/latency-gpu.md
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from asd_policy.benchmark import (
    Case,
    ExactAnswersAtNetworkCost,
    analytic_chunk_model,
    bench_schedule,
    default_cases,
    describe_machine,
    markdown_table,
    run_grid,
    write_results,
)
from asd_policy.model import build_unet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="chi", help="U-Net size: tiny, small or chi (random weights)")
    parser.add_argument("--checkpoint", help="time a trained policy's network instead (its dims override the ones below)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 28])
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--action-dim", type=int, default=10, help="10: robomimic's 7-D pose action padded like a 2-arm task; any width works")
    parser.add_argument("--obs-dim", type=int, default=20)
    parser.add_argument("--L", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--anchors", nargs="+", default=["reuse", "fresh"])
    parser.add_argument("--variants", nargs="+", default=None, help="eager and/or graph (default: both on CUDA, eager on CPU)")
    parser.add_argument("--models", nargs="+", default=["random", "exact"], choices=["random", "exact"])
    parser.add_argument("--bf16", action="store_true", help="run the network under bf16 autocast in the graph variant")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants or (["eager", "graph"] if device.type == "cuda" else ["eager"])
    schedule = bench_schedule()
    if args.checkpoint:
        from asd_policy.checkpoint import load_policy

        policy = load_policy(args.checkpoint)
        network, name = policy.model, f"{policy.config.task_name or 'policy'}-{policy.config.unet.get('size') or 'custom'}"
        args.horizon, args.action_dim = policy.config.horizon, policy.config.action_dim
        cond_dim = policy.config.n_obs_steps * policy.config.obs_dim
        schedule = policy.schedule
    else:
        cond_dim = 2 * args.obs_dim
        network, name = build_unet(args.size, args.action_dim, cond_dim), f"unet-{args.size}"
    models = {}
    if "random" in args.models:
        models[f"{name}{'' if args.checkpoint else '-random'}"] = (network, cond_dim)
    if "exact" in args.models:
        exact = analytic_chunk_model(schedule, args.horizon, args.action_dim)
        models[f"exact@{name}"] = (ExactAnswersAtNetworkCost(network, exact), cond_dim)
    cases = default_cases(tuple(args.L), tuple(args.anchors), paradigms=True)
    cases.insert(1, Case(cases[0].sampler, capture="chunk"))
    paradigms = next(c for c in cases if c.method == "paradigms").sampler.options

    print(f"device: {describe_machine(device)}", flush=True)
    start = time.time()
    meta = {"device_description": describe_machine(device), "command": "python " + " ".join(sys.argv), "script": "bench_latency",
            "bf16": args.bf16, "paradigms_tolerance": paradigms["tolerance"], "paradigms_window": paradigms["window"]}
    rows = []
    for batch in args.batch:  # smallest first; results are written after each batch size, so a cut-off run keeps them
        for name, model in models.items():
            rows += run_grid({name: model}, schedule, args.horizon, args.action_dim, [batch], cases, variants, device, args.repeats,
                             autocast_dtype=torch.bfloat16 if args.bf16 else None, progress=lambda line: print(line, flush=True))
            write_results(rows, meta, args.json, args.markdown)
    print(f"\n{len(rows)} cells in {time.time() - start:.0f}s\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
