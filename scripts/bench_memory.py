"""How much Python-traced memory a RealtimeController gains over a long run without a reset.

One controller drives a task's env for ``--ticks`` ticks on the simulated clock with a fixed
latency model (no sleeping, no reset of the controller; the env is reset when its episode ends, as
a robot starts its next task), and tracemalloc compares the traced memory ``--tail`` ticks before
the end with the end: a bounded controller gains nothing once its windows are full.

    python scripts/bench_memory.py                      # reach_around, DDIM-2, 20 Hz, 80 ms, 10 000 ticks
    python scripts/bench_memory.py --max-records none   # the full record (what an evaluation keeps)
"""
from __future__ import annotations

import argparse
import tracemalloc

import torch

import asd_envs
from asd_policy.control.realtime import RealtimeController
from asd_policy.policy.checkpoint import load_policy
from asd_policy.sampling.presets import SamplerConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/reach_around")
    p.add_argument("--task", default="reach_around")
    p.add_argument("--ticks", type=int, default=10_000)
    p.add_argument("--tail", type=int, default=8_000, help="growth is measured over the last TAIL ticks")
    p.add_argument("--hz", type=float, default=20.0)
    p.add_argument("--latency-ms", type=float, default=80.0)
    p.add_argument("--steps", type=int, default=2, help="DDIM inference steps")
    p.add_argument("--max-records", default="default", help="an int, 'none' (keep all) or 'default'")
    return p.parse_args()


def controller_kwargs(max_records: str) -> dict:
    """Nothing for 'default', so the same command runs on code that has no such setting."""
    if max_records == "default":
        return {}
    return {"max_records": None if max_records.lower() == "none" else int(max_records)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint, device="cpu")
    env = asd_envs.make_env(args.task)
    sampler = SamplerConfig(f"ddim{args.steps}", "ddim", {"num_inference_steps": args.steps})
    ctrl = RealtimeController(policy, args.hz, sampler=sampler, clock="sim", latency=args.latency_ms,
                              generator=torch.Generator().manual_seed(0), **controller_kwargs(args.max_records))
    obs, _ = env.reset(seed=0)
    ctrl.reset(obs)
    tracemalloc.start()
    mark = 0
    for k in range(args.ticks):
        if k == args.ticks - args.tail:
            ctrl.report()  # once before the mark too: its first call's one-off allocations are no growth
            mark = tracemalloc.get_traced_memory()[0]
        obs, _, term, trunc, _ = env.step(ctrl.act(obs))
        if term or trunc:
            obs, _ = env.reset(seed=k)
    loop = tracemalloc.get_traced_memory()[0]
    ctrl.report()  # the report's lists are kept on the controller too
    end = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    ctrl.close()
    hours = args.tail / args.hz / 3600
    print(f"{args.ticks} ticks at {args.hz:g} Hz, {args.latency_ms:g} ms, DDIM-{args.steps}, "
          f"max_records={args.max_records}: over the last {args.tail} ticks the traced memory grew "
          f"{(loop - mark) / 2**20:.3f} MiB ({(loop - mark) / 2**20 / hours:.2f} MiB per hour of robot time), "
          f"{(end - mark) / 2**20:.3f} MiB with the report")


if __name__ == "__main__":
    main()
