"""Sampler benchmark: sequential calls, NFE and wall-clock per chunk for ddpm / ddim / asd.

Two models: the exact Gaussian-mixture denoiser (acceptance numbers that mean something) and a
diffusion-policy ConditionalUnet1D with random weights (the cost of real network calls). Eager
`sample` on whatever device is present; for CUDA graphs and ParaDiGMS see bench_latency.py.

    python scripts/bench_sampler.py                       # CPU: batch 1 and 8, both models
    python scripts/bench_sampler.py --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import sys

import torch

from asd_policy.bench.harness import (
    add_grid_arguments,
    analytic_chunk_model,
    bench_schedule,
    default_cases,
    describe_machine,
    markdown_table,
    run_grid,
    write_results,
)
from asd_policy.policy.unet import build_unet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, size="small", batch=[1, 8], action_dim=2, obs_dim=10, repeats=5)
    parser.add_argument("--models", nargs="+", default=["analytic", "unet"], choices=["analytic", "unet"])
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    schedule = bench_schedule()
    models = {}
    if "analytic" in args.models:
        models["analytic"] = (analytic_chunk_model(schedule, args.horizon, args.action_dim), 0)
    if "unet" in args.models:
        cond_dim = 2 * args.obs_dim
        models[f"unet-{args.size}-random"] = (build_unet(args.size, args.action_dim, cond_dim), cond_dim)
    print(f"device: {describe_machine(device)}", flush=True)
    rows = run_grid(models, schedule, args.horizon, args.action_dim, args.batch, default_cases(tuple(args.L)),
                    ["eager"], device, args.repeats, progress=lambda line: print(line, flush=True))
    print()
    print(markdown_table(rows))
    meta = {"device_description": describe_machine(device), "command": "python " + " ".join(sys.argv), "script": "bench_sampler"}
    write_results(rows, meta, args.json, args.markdown)


if __name__ == "__main__":
    main()
