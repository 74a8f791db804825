#!/usr/bin/env python
"""Post-process a GPU session (scripts/gpu_session.sh OUT_DIR) back on a CPU, and publish it.

    python scripts/gpu_post.py OUT_DIR                       # everything, into this checkout's docs
    python scripts/gpu_post.py OUT_DIR --skip-realtime       # no simulated-clock runs (the slow part)
    python scripts/gpu_post.py OUT_DIR --root /tmp/copy      # write into a copy of the docs instead

1. the trained-policy timing of every checkpoint -> docs/bench/latency-<gpu>-trained.json (and .md),
   the trained rows of docs/benchmarks.md and of the README's "What ASD buys" (marked sections);
2. a latency profile from the measured medians per checkpoint -> docs/bench/latency-profile-<gpu>-trained-<checkpoint>.json,
   and with it each task on the simulated clock at 1, 2 and 4 times its control rate -> the
   measured-GPU points of docs/results-realtime.md (runs under docs/results/realtime/<task>/<gpu>_trained/);
3. each checkpoint trained there evaluated over held-out episodes (50 by default, seeds from 1000) with
   DDPM-100, ASD and DDIM-10; shipped, with its card, only if DDPM-100 beats the shipped checkpoint.
A TINY session's output (manifest "tiny") is only a rehearsal: its numbers are toy-sized and must
not be committed; rehearse with --root pointing at a scratch copy.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from asd_policy.bench.gpu_session import (
    benchmarks_table,
    merge_timing,
    readme_table,
    replace_section,
    unpack,
)
from asd_policy.bench.harness import markdown_table
from asd_policy.control.latency import profile_from_bench
from asd_policy.policy.checkpoint import read_metadata
from asd_policy.reports.realtime import load_runs, realtime_markdown

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"square": 0.8, "lift": 0.95, "can": 0.9, "reach_around": 0.95, "fetch_push": 0.9}


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def write_section(path: Path, name: str, body: str) -> None:
    path.write_text(replace_section(path.read_text() if path.exists() else "", name, body))
    print(f"wrote section {name} of {path}")


def publish_timing(merged: dict, root: Path, gpu: str, variant: str, session: str) -> None:
    """The merged benchmark file and the trained rows of the two docs tables."""
    bench = root / "docs" / "bench" / f"latency-{gpu}-trained"
    bench.with_suffix(".json").write_text(json.dumps(merged, indent=2) + "\n")
    curves = ["| model | rows | variant | forward ms |", "|---|---|---|---|"] + [
        f"| {m} | {r['rows']} | {'graph' if r['graph'] else 'eager'} | {r['forward_ms']:.2f} |"
        for m, curve in merged["row_cost"].items() for r in curve]
    bench.with_suffix(".md").write_text(f"Device: {merged['meta'].get('device_description')}\n\n{markdown_table(merged['rows'])}\n\n"
                                        "Row cost (one forward of the trained network against rows per call):\n\n" + "\n".join(curves) + "\n")
    where = (f"Trained policies, {merged['meta'].get('device_description')}, {variant} "
             f"({session}; each policy on conditioning recorded from its task's held-out observations; "
             f"all rows: [bench/latency-{gpu}-trained.md](bench/latency-{gpu}-trained.md)):\n\n")
    write_section(root / "docs" / "benchmarks.md", "gpu-trained", where + benchmarks_table(merged, variant))
    write_section(root / "README.md", "gpu-trained",
                  f"Trained policies, {merged['meta'].get('device_description')}, batch 1, {variant} ({session}; the stand-in rows above are "
                  f"not trained):\n\n" + readme_table(merged, variant))


def profiles(merged: dict, root: Path, gpu: str, variant: str) -> dict[str, tuple[str, Path]]:
    """{model: (task, profile path)} from each trained policy's batch-1 medians."""
    out = {}
    for model, checkpoint in merged["checkpoints"].items():
        meta = read_metadata(REPO / checkpoint)
        task = meta.get("config", {}).get("task_name")
        try:
            profile = profile_from_bench(merged, model, variant, 1, meta.get("config", {}).get("sampler"))
        except ValueError as exc:
            print(f"{model}: no profile ({exc})")
            continue
        path = root / "docs" / "bench" / f"latency-profile-{gpu}-trained-{Path(checkpoint).name}.json"
        path.write_text(json.dumps(profile, indent=2) + "\n")
        out[model] = (task, path)
    return out


def realtime_points(profs: dict, merged: dict, root: Path, gpu: str, args) -> None:
    """Each state policy's task on the simulated clock with the GPU's medians as the latency model."""
    import asd_envs

    run_roots = []
    for model, (task, profile) in profs.items():
        checkpoint = merged["checkpoints"][model]
        config = read_metadata(REPO / checkpoint).get("config", {})
        if task is None or config.get("image_features") or config.get("obs_features") or (args.tasks and task not in args.tasks):
            continue  # a camera or LeRobot policy: its simulated-clock runs are not part of this page
        native = asd_envs.get_task(task).control_hz
        base = root / "docs" / "results" / "realtime" / task / f"{gpu}_trained"
        for mult in args.rates:
            hz = native * mult
            run([sys.executable, "scripts/eval.py", f"task={task}", f"checkpoint={checkpoint}", f"samplers=[{','.join(args.realtime_samplers)}]",
                 f"episodes={args.realtime_episodes}", f"num_envs={min(10, args.realtime_episodes)}", "realtime=sim",
                 f"control_hz={hz}", f"latency_profile={profile}", "logger=none", "progress=false",
                 f"hydra.run.dir={base / f'{hz:g}hz_switch'}"])
        run_roots.append((task, base))
    if run_roots:
        body = (f"**Measured on the GPU ({gpu}).** Each sampler's chunk takes the trained policy's own median batch-1 latency "
                f"measured there (`docs/bench/latency-profile-{gpu}-trained-<checkpoint>.json`).\n\n"
                + "\n\n".join(f"{task}:\n\n{realtime_markdown(load_runs([base]))}" for task, base in run_roots))
        write_section(root / "docs" / "results-realtime.md", "gpu-trained-realtime", body)


def evaluate_and_ship(ckpt: Path, root: Path, gpu: str, args) -> str:
    """Held-out evaluation of one trained checkpoint; shipped over the old one only when DDPM-100 beats it."""
    cfg = json.loads((ckpt / "policy.json").read_text())["config"]
    task, camera = cfg["task_name"], bool(cfg.get("image_features"))
    name = f"{task}_image" if camera else task
    eval_dir = root / "docs" / "results" / f"{gpu}_trained" / ckpt.name
    size = [f"task.image_size={cfg['image_features'][0]['shape'][-1]}"] if camera else []
    try:
        run([sys.executable, "scripts/eval.py", f"task={name}", f"checkpoint={ckpt}", "samplers=[ddpm,asd,ddim]", *size,
             f"episodes={args.episodes}", f"num_envs={min(10, args.episodes)}", "logger=none", "progress=false", f"hydra.run.dir={eval_dir}"])
    except subprocess.CalledProcessError as exc:
        return f"{ckpt.name}: evaluation failed (exit {exc.returncode}); not shipped"
    new = json.loads((eval_dir / "results.json").read_text())["samplers"]
    shipped_results = root / "docs" / "results" / ("camera" if camera else "") / name / "results.json"
    old = json.loads(shipped_results.read_text())["samplers"]["ddpm"]["success_rate"] if shipped_results.is_file() else None
    rate = new["ddpm"]["success_rate"]
    line = f"{ckpt.name}: DDPM-100 {rate:.0%} (ASD {new['asd']['success_rate']:.0%}, DDIM-10 {new['ddim']['success_rate']:.0%}) over {args.episodes} held-out episodes; shipped {old if old is None else f'{old:.0%}'}"
    if old is not None and rate <= old:
        return line + ": not shipped"
    dest = root / "checkpoints" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ckpt, dest)
    shipped_results.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(eval_dir / "results.json", shipped_results)
    target = ["--target", str(TARGETS[task])] if task in TARGETS and not camera else []
    run([sys.executable, "scripts/model_card.py", str(dest), str(shipped_results), *target,
         "--note", f"trained in one GPU session ({gpu}, scripts/gpu_session.sh); evaluated here with scripts/gpu_post.py"])
    return line + f": shipped to {dest} (now rerun scripts/report.py for docs/results.md)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, help="the OUT_DIR of scripts/gpu_session.sh, as the device tool brought it back")
    ap.add_argument("--root", type=Path, default=REPO, help="the checkout whose docs and checkpoints are written")
    ap.add_argument("--episodes", type=int, default=50, help="held-out episodes per sampler for each trained checkpoint")
    ap.add_argument("--realtime-episodes", type=int, default=20)
    ap.add_argument("--rates", type=float, nargs="+", default=[1, 2, 4], help="multiples of each task's control rate")
    ap.add_argument("--tasks", nargs="*", default=None, help="tasks run on the simulated clock (default: every timed one)")
    ap.add_argument("--realtime-samplers", nargs="+", default=["ddpm", "asd", "ddim"])
    ap.add_argument("--skip-realtime", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args(argv)

    work = args.out_dir / "unpacked"
    manifest = unpack(args.out_dir, work)
    gpu = manifest["device"].get("slug", "gpu")
    variant = "eager" if manifest.get("tiny") else "graph"
    session = f"`scripts/gpu_session.sh`, {manifest['wall_s']} s"
    for p in manifest["parts"]:
        print(f"{p['status']:8s} {p['name']:28s} {p['seconds']:4d} s  {p['last_line'][:100]}")
    merged = merge_timing(work / "timing")
    verdicts = []
    if merged["rows"]:
        publish_timing(merged, args.root, gpu, variant, session)
        profs = profiles(merged, args.root, gpu, variant)
        if not args.skip_realtime:
            realtime_points(profs, merged, args.root, gpu, args)
    if not args.skip_eval:
        verdicts = [evaluate_and_ship(c, args.root, gpu, args) for c in sorted((work / "checkpoints").glob("*/")) if (c / "policy.json").is_file()]
    (args.root / "docs" / "bench" / f"gpu-session-{gpu}.json").write_text(json.dumps({**manifest, "verdicts": verdicts}, indent=2) + "\n")
    print("\n".join(verdicts) or ("evaluation skipped" if args.skip_eval else "no trained checkpoint came back"))


if __name__ == "__main__":
    main()
