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

from asd_policy.benchmark import analytic_chunk_model, bench_schedule, default_cases, describe_machine, markdown_table, run_grid, write_results
from asd_policy.model import build_unet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", default="small", help="U-Net size: tiny, small or chi")
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--obs-dim", type=int, default=10, help="observation width; the U-Net is conditioned on 2 steps of it")
    parser.add_argument("--L", type=int, nargs="+", default=[4, 8, 16, 32], help="speculation lengths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["analytic", "unet"], choices=["analytic", "unet"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
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
