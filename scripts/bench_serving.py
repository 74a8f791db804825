#!/usr/bin/env python
"""Serving benchmark: what the network costs a chunk, and what cross-client batching buys.

Starts ``scripts/serve.py`` as a separate process on loopback (as a robot's client would meet it)
and measures, all in one run so that the ratios share the machine's conditions:

1. **Overhead at batch 1.** The same seeded requests in-process (``predict_action``) and through
   the server (``RemotePolicy``), alternating; a seed fixes the chain, so the paired difference is
   the serving overhead (msgpack, websocket, loopback, queue), p50 and p99. Also the client's
   latency minus the server's own ``infer_ms``.
2. **Throughput.** 1, 4 and 16 clients, each on its own connection sending requests back to back;
   chunks/s over a fixed window, with batching on (``max_batch=16``) and off (``max_batch=1``),
   for each sampler.

    python scripts/bench_serving.py --checkpoint checkpoints/lift --json docs/bench/serving-cpu.json
    python scripts/bench_serving.py --checkpoint checkpoints/reach_around_lerobot --task reach_around
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from asd_policy.bench.harness import describe_machine
from asd_policy.policy.checkpoint import load_policy
from asd_policy.serving import RemotePolicy

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """scripts/serve.py on a free loopback port, in its own process."""

    def __init__(self, checkpoint: str, threads: int, max_batch: int, max_wait_ms: float, task: str | None = None,
                 device: str = "cpu"):
        cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), f"checkpoint={checkpoint}", "port=0",
               f"torch_threads={threads}", f"max_batch={max_batch}", f"max_wait_ms={max_wait_ms}", f"device={device}"]
        if task:  # a LeRobot checkpoint records no task
            cmd.append(f"task={task}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "ASD_POLICY_API_KEY": ""})
        for line in self.proc.stdout:
            if m := re.search(r" at (ws://\S+) ", line):
                self.url = m.group(1)
                return
        raise RuntimeError(f"scripts/serve.py exited with {self.proc.wait()}")

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "mean": float(np.mean(values)), "n": len(values)}


def overhead(args, policy, histories: np.ndarray) -> dict:
    """Paired in-process vs remote latency of the same seeded batch-1 chunks."""
    method, options = policy.sampler_kwargs(args.overhead_sampler)
    local, remote_ms, server_ms = [], [], []
    with ServerProcess(args.checkpoint, args.threads, 1, 0.0, args.task, args.device) as url, RemotePolicy(url) as remote:
        remote.predict_action(histories[:1], seed=[0], sampler=args.overhead_sampler)  # warm-up
        policy.predict_action(torch.as_tensor(histories[:1]), method=method, **options)
        for i in range(args.overhead_chunks):
            h = histories[i % len(histories)][None]
            t0 = time.perf_counter()
            policy.predict_action(torch.as_tensor(h), method=method, generator=torch.Generator().manual_seed(i), **options)
            t1 = time.perf_counter()
            out = remote.predict_action(h, seed=[i], sampler=args.overhead_sampler)
            t2 = time.perf_counter()
            local.append(1000 * (t1 - t0))
            remote_ms.append(1000 * (t2 - t1))
            server_ms.append(out.stats.server_timing[0]["infer_ms"])
    paired = [r - l for r, l in zip(remote_ms, local)]
    network = [r - s for r, s in zip(remote_ms, server_ms)]
    return {"sampler": args.overhead_sampler, "in_process_ms": percentiles(local), "remote_ms": percentiles(remote_ms),
            "overhead_ms": percentiles(paired), "client_minus_server_infer_ms": percentiles(network)}


def throughput(url: str, sampler: str, clients: int, histories: np.ndarray, warmup_s: float, window_s: float) -> dict:
    """chunks/s of `clients` connections sending back to back, counted over [warmup, warmup + window]."""
    stamps: list[list[float]] = [[] for _ in range(clients)]
    sizes: list[int] = []
    start, stop = threading.Barrier(clients + 1), threading.Event()

    def client(c: int) -> None:
        with RemotePolicy(url) as remote:
            start.wait()
            i = 0
            while not stop.is_set():
                out = remote.predict_action(histories[(c + i) % len(histories)][None], seed=[c * 100000 + i], sampler=sampler)
                stamps[c].append(time.perf_counter())
                sizes.append(out.stats.server_timing[0]["batch_size"])
                i += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter() + warmup_s
    time.sleep(warmup_s + window_s)
    stop.set()
    for t in threads:
        t.join(600)
    done = sum(t0 <= s <= t0 + window_s for st in stamps for s in st)
    return {"sampler": sampler, "clients": clients, "chunks_per_s": done / window_s, "chunks": done,
            "mean_batch": float(np.mean(sizes)) if sizes else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/lift")
    parser.add_argument("--task", help="the task a LeRobot checkpoint runs on (ours record it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    parser.add_argument("--device", default="cpu", help="where the policy runs, in-process and in the server (cuda on a GPU)")
    parser.add_argument("--overhead-sampler", default="asd")
    parser.add_argument("--overhead-chunks", type=int, default=40)
    parser.add_argument("--samplers", nargs="+", default=["asd", "ddpm"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=16, help="batching on; off is max_batch=1")
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window opens")
    parser.add_argument("--window", type=float, default=20.0, help="seconds counted per throughput point")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint, device=args.device)
    rng = np.random.default_rng(0)
    # observation histories inside the normaliser's range, as the task produces them
    unit = rng.uniform(-0.8, 0.8, size=(64, policy.n_obs_steps, policy.obs_dim)).astype(np.float32)
    histories = policy.obs_normalizer.unnormalize(torch.as_tensor(unit, device=policy.device)).cpu().numpy().astype(np.float32)
    results = {"machine": describe_machine(torch.device(args.device)), "checkpoint": args.checkpoint,
               "chunk": [policy.horizon, policy.action_dim], "threads": args.threads, "load_before": os.getloadavg()[0],
               "command": " ".join(["python scripts/bench_serving.py", *sys.argv[1:]])}
    results["overhead"] = overhead(args, policy, histories)
    o = results["overhead"]
    print(f"batch 1, {args.overhead_sampler}, chunk {results['chunk']}: in-process p50 {o['in_process_ms']['p50']:.1f} ms, "
          f"through the server p50 {o['remote_ms']['p50']:.1f} ms; overhead p50 {o['overhead_ms']['p50']:.2f} ms, "
          f"p99 {o['overhead_ms']['p99']:.2f} ms (client - server infer_ms: p50 "
          f"{o['client_minus_server_infer_ms']['p50']:.2f}, p99 {o['client_minus_server_infer_ms']['p99']:.2f})", flush=True)

    rows = []
    for batching, max_batch in (("on", args.max_batch), ("off", 1)):
        with ServerProcess(args.checkpoint, args.threads, max_batch, args.max_wait_ms, args.task, args.device) as url:
            for sampler in args.samplers:
                for clients in args.clients:
                    row = {"batching": batching, **throughput(url, sampler, clients, histories, args.warmup, args.window)}
                    rows.append(row)
                    print(f"  batching {batching:3s} {sampler:5s} {clients:3d} clients: {row['chunks_per_s']:6.2f} chunks/s "
                          f"(mean batch {row['mean_batch']})", flush=True)
    results["throughput"] = rows
    results["load_after"] = os.getloadavg()[0]

    def rate(batching: str, sampler: str, clients: int) -> float:
        return next(r["chunks_per_s"] for r in rows if (r["batching"], r["sampler"], r["clients"]) == (batching, sampler, clients))

    print("\n| sampler | clients | batching off (chunks/s) | batching on (chunks/s) | gain |")
    print("|---|---|---|---|---|")
    for sampler in args.samplers:
        for clients in args.clients:
            off, on = rate("off", sampler, clients), rate("on", sampler, clients)
            print(f"| {sampler} | {clients} | {off:.2f} | {on:.2f} | {on / off if off else float('nan'):.2f}x |")
    print(f"\nmachine: {results['machine']}; load average {results['load_before']:.1f} before, {results['load_after']:.1f} after")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
