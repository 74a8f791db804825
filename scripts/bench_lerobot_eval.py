"""Run LeRobot's own ``lerobot-eval`` with every action chunk timed.

    python scripts/bench_lerobot_eval.py --threads 1 -- --policy.path=<dir> --env.type=asd_envs \
        --env.task=reach_around --eval.n_episodes=50 --eval.batch_size=1 --policy.device=cpu --output_dir=<out>

Everything after ``--`` goes to lerobot-eval unchanged; its rollout, success and eval_info.json are
LeRobot's. The one addition: LeRobot's ``DiffusionPolicy.predict_action_chunk`` (which
``diffusion_asd`` inherits and calls) is wrapped in a timer, the device synchronised on both sides, so
each chunk's latency is measured where the policy makes it. ``<out>/chunk_timing.json`` gets the
latency (mean and percentiles), the chunks, the sequential network calls per chunk and the machine.
Needs lerobot; on this project's CPU test machine run it with PYTHONPATH=tests/lerobot_site (the
torchvision workaround the tests use).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from asd_policy.bench.harness import describe_machine
from asd_policy.control.episode import latency_summary


def _arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (one is fastest at batch 1 on a CPU)")
    if "--" not in argv:
        parser.error("give lerobot-eval's arguments after --")
    cut = argv.index("--")
    return parser.parse_args(argv[:cut]), argv[cut + 1:]


def _timed(records: list[dict]):
    """Wrap LeRobot's DiffusionPolicy.predict_action_chunk: latency, batch and sequential calls per chunk."""
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inner = DiffusionPolicy.predict_action_chunk

    def predict_action_chunk(self, batch, *args, **kwargs):
        device = next(iter(self.parameters())).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        actions = inner(self, batch, *args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats = getattr(self, "last_sampler_stats", None)  # diffusion_asd's; LeRobot's own sampler calls once per step
        calls = stats.sequential_calls if stats is not None else len(self.diffusion.noise_scheduler.timesteps)
        records.append({"ms": (time.perf_counter() - start) * 1e3, "batch": int(actions.shape[0]), "calls": calls,
                        "policy": self.name})
        return actions

    DiffusionPolicy.predict_action_chunk = predict_action_chunk


def main(argv: list[str] | None = None) -> None:
    args, eval_args = _arguments(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    out = next((Path(a.split("=", 1)[1]) for a in eval_args if a.startswith("--output_dir=")), None)
    if out is None:
        raise SystemExit("error: give lerobot-eval an --output_dir=<dir>; chunk_timing.json is written there")
    records: list[dict] = []
    _timed(records)
    from lerobot.scripts.lerobot_eval import main as lerobot_eval

    sys.argv = ["lerobot-eval", *eval_args]
    start = time.perf_counter()
    lerobot_eval()
    wall = time.perf_counter() - start
    latency = latency_summary([r["ms"] for r in records])
    summary = {"policy": records[0]["policy"] if records else None, "chunks": len(records),
               "batch_sizes": sorted({r["batch"] for r in records}), "chunk_latency_ms": latency,
               "sequential_calls_mean": sum(r["calls"] for r in records) / max(1, len(records)),
               "eval_wall_s": round(wall, 1), "torch_threads": args.threads, "machine": describe_machine(torch.device("cpu")),
               "lerobot_eval_args": eval_args}
    (out / "chunk_timing.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['policy']}: {len(records)} chunks, {latency['mean']:.1f} ms mean (p95 {latency['p95']:.1f}), "
          f"{summary['sequential_calls_mean']:.1f} sequential calls per chunk, lerobot-eval {wall:.0f} s -> {out / 'chunk_timing.json'}")


if __name__ == "__main__":
    main()
