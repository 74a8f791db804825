#!/usr/bin/env python
"""Ship a trained checkpoint: copy it to checkpoints/<task>/ and write its model card (README.md).

    python scripts/make_model_card.py --checkpoint runs/train/reach_around_small/checkpoint \
        --results outputs/eval/reach_around/<run>/results.json --target 0.95 \
        --data "scripted expert (envs/), 200 demos, collect seed 0" --note "..."

The card takes the training facts from the checkpoint's policy.json and the success rate of the
DDPM-100 sampler (with its 95% interval) from an eval results.json (scripts/eval.py).
"""
import argparse
import json
import math
import shutil
import sys
from pathlib import Path

MAX_BYTES = 20 * 1024 * 1024


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="trained checkpoint directory (policy.json + policy.safetensors)")
    ap.add_argument("--results", required=True, help="results.json of scripts/eval.py with a ddpm sampler")
    ap.add_argument("--out", default=None, help="destination (default checkpoints/<task>)")
    ap.add_argument("--target", type=float, default=None, help="success-rate target of the task (issue 4)")
    ap.add_argument("--data", default="", help="where the demonstrations came from (expert, count, seed)")
    ap.add_argument("--train-command", default=None, help="the training command (default: the one recorded)")
    ap.add_argument("--eval-command", default=None, help="the evaluation command (default: the one recorded)")
    ap.add_argument("--note", default="", help="free text: what was tried, caveats")
    a = ap.parse_args(argv)

    src = Path(a.checkpoint)
    meta = json.loads((src / "policy.json").read_text())
    cfg, info = meta["config"], meta.get("training", {})
    task = cfg.get("task_name") or "unknown"
    res = json.loads(Path(a.results).read_text())
    if res.get("task") not in (None, task):
        print(f"error: results are for task {res.get('task')!r}, checkpoint for {task!r}", file=sys.stderr)
        return 1
    dst = Path(a.out or Path("checkpoints") / task)
    dst.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        for name in ("policy.safetensors", "policy.json"):
            shutil.copy2(src / name, dst / name)
    size = sum((dst / n).stat().st_size for n in ("policy.safetensors", "policy.json"))
    if size > MAX_BYTES:
        print(f"error: checkpoint is {size / 2**20:.1f} MB > 20 MB", file=sys.stderr)
        return 1

    rows = []
    for name, s in res["samplers"].items():
        n = int(s["episodes"])
        k = round(s["success_rate"] * n)
        lo, hi = s.get("success_ci95") or wilson(k, n)
        rows.append(
            f"| {name} | {json.dumps(s.get('sampler', {}))} | {n} | {s['success_rate']:.2f} | [{lo:.2f}, {hi:.2f}] | "
            f"{s.get('sequential_calls_mean', float('nan')):.1f} | {s['chunk_latency_ms']['p50']:.0f} |"
        )
    ddpm = res["samplers"].get("ddpm")
    verdict = ""
    if a.target is not None and ddpm is not None:
        met = ddpm["success_rate"] >= a.target
        verdict = (
            f"**Target (DDPM-100): >= {a.target:.0%}. Measured {ddpm['success_rate']:.1%} over {ddpm['episodes']} "
            f"episodes: {'met' if met else 'NOT met'}.**"
        )
    unet = cfg["unet"]
    n_params = None
    try:
        from safetensors import safe_open

        with safe_open(str(dst / "policy.safetensors"), "pt") as f:
            n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # noqa: BLE001 - the count is informational
        pass
    card = f"""# Diffusion policy for `{task}`

{verdict}

| | |
|---|---|
| task | `{task}` (obs {cfg['obs_dim']} dims: {', '.join(cfg.get('obs_keys') or [])}; action {cfg['action_dim']} dims) |
| network | ConditionalUnet1D size `{unet.get('size')}` (down_dims {unet['down_dims']}, {n_params or '?'} parameters), EMA weights |
| horizons | n_obs_steps {cfg['n_obs_steps']}, horizon {cfg['horizon']}, n_action_steps {cfg['n_action_steps']} |
| noise schedule | {json.dumps(cfg['schedule'])} |
| default sampler | {json.dumps(cfg['sampler'])} |
| data | {a.data or 'see dataset'}; {info.get('num_train_demos', '?')} training demos, {info.get('num_valid_demos', '?')} validation demos, {info.get('num_train_windows', '?')} windows |
| training | {info.get('steps', '?')} steps, batch {info.get('batch_size', '?')}, lr {info.get('lr', '?')}, seed {info.get('seed', '?')}, {info.get('world_size', 1)} process(es) on {info.get('device', '?')}, wall time {info.get('wall_time_s', 0) / 60:.0f} min, torch {info.get('torch', '?')} |
| final losses | train {info.get('train_loss')}, validation (EMA) {info.get('val_loss')} |
| file size | {size / 2**20:.1f} MB |

## Success rate

Evaluated with `scripts/eval.py` on {res.get('device_name') or res.get('device')} (seeds {res.get('seed')}..; 95% Wilson interval):

| sampler | settings | episodes | success | 95% CI | sequential calls / chunk | chunk latency p50 (ms) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Reproduce

```bash
{a.train_command or info.get('command', '(training command not recorded)')}
{a.eval_command or res.get('command', '')}
```

{a.note}
"""
    (dst / "README.md").write_text(card)
    print(f"wrote {dst} ({size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
