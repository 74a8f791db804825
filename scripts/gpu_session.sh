#!/usr/bin/env bash
# One GPU session in one call (docs/gpu-session.md): trained-policy timing, serving, exactness on
# CUDA, then training (square small and chi, the image lift policy) in parallel, each part under its
# own timeout; the results packed into OUT_DIR as the device tool brings files back (at most 8 files,
# 16 MiB each), with manifest.json saying which parts passed. Post-process on a CPU with
# scripts/gpu_post.py OUT_DIR.
#
#   bash scripts/gpu_session.sh OUT_DIR          # on the GPU machine, within 9 minutes (BUDGET_S)
#   TINY=1 bash scripts/gpu_session.sh OUT_DIR   # the same parts on this CPU at toy sizes, in seconds
#
# Needs a CUDA torch and what scripts/gpu_prepare.sh put in gpu-carry/ (wheels the device lacks,
# the square demonstrations, each checkpoint's recorded conditioning rows). Settings (environment):
# PARTS (timing,serving,exactness,train,image), BUDGET_S, CKPTS, SQUARE_STEPS, CHI_STEPS, IMAGE_DEMOS.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_session.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
t0=$(date +%s)
TINY=${TINY:-0}
PARTS=${PARTS:-timing,serving,exactness,train,image}
CARRY=${CARRY:-gpu-carry}
work=${GPU_SESSION_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-session.XXXXXX")}
mkdir -p "$work"/{logs,timing,serving,exactness,train,ship}
: >"$work/parts.tsv"

# ---- environment: wheels the device lacks, asd_envs from envs/ (no install needed) -----------
mkdir -p "$work/shim" && ln -sfn "$PWD/envs" "$work/shim/asd_envs"
if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
    for whl in "$CARRY"/wheels/*.whl; do  # one by one: a wheel for another Python (a rehearsal here) skips only itself
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$whl" >>"$work/logs/wheels.log" 2>&1 ||
            echo "not installed: $(basename "$whl")" >>"$work/logs/wheels.log"
    done
fi
export PYTHONPATH="$work/shim:$PWD:$work/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}

if [ "$TINY" = 1 ]; then  # toy sizes on the CPU: rehearses every part and the packing in seconds
    DEV=cpu; BUDGET_S=${BUDGET_S:-120}; CKPTS=${CKPTS:-checkpoints/reach_around}
    BATCH="1"; REPEATS=1; LS="16"; ROWS="1 4"; VARIANT=eager
    SERVE="--clients 1 2 --samplers asd --warmup 0.2 --window 0.5 --overhead-chunks 2"
    TESTS="tests/test_fast.py"
    SQUARE_TASK=${SQUARE_TASK:-reach_around}; SQUARE_STEPS=${SQUARE_STEPS:-4}; CHI_STEPS=${CHI_STEPS:-0}; TRAIN="--size tiny --batch-size 8 --ckpt-every 2"
    IMAGE_TASK=reach_around; IMAGE_CAMERAS=top; IMAGE_SIZE=32; IMAGE_DEMOS=${IMAGE_DEMOS:-2}; IMAGE_STEPS=3
    IMAGE_TRAIN="--size tiny --batch-size 4 --ckpt-every 2"; VISION='{"crop_shape": [28, 28], "conv_channels": [16, 32, 32], "keypoints": 8}'
else
    DEV=cuda; BUDGET_S=${BUDGET_S:-530}; CKPTS=${CKPTS:-$(ls -d checkpoints/*/ | sed 's:/$::')}
    BATCH="1 16"; REPEATS=5; LS="16 32"; ROWS="1 2 4 8 16 32 64 128 256 512"; VARIANT=graph
    SERVE="--clients 1 4 16 64 --samplers asd ddpm --warmup 1 --window 4 --overhead-chunks 20"
    TESTS="tests/test_fast.py tests/test_sampling.py"
    SQUARE_TASK=square; SQUARE_STEPS=${SQUARE_STEPS:-6000}; CHI_STEPS=${CHI_STEPS:-1500}; TRAIN="--batch-size 256 --ckpt-every 500"
    IMAGE_TASK=lift; IMAGE_CAMERAS="agentview robot0_eye_in_hand"; IMAGE_SIZE=84; IMAGE_DEMOS=${IMAGE_DEMOS:-50}; IMAGE_STEPS=${IMAGE_STEPS:-3000}
    IMAGE_TRAIN="--batch-size 64 --ckpt-every 250"; VISION='{}'
fi
export work DEV IMAGE_TASK IMAGE_CAMERAS IMAGE_SIZE IMAGE_DEMOS IMAGE_STEPS IMAGE_TRAIN VISION
deadline=$((t0 + BUDGET_S - 25))  # 25 s kept for packing
left() { echo $((deadline - $(date +%s))); }
want() { [[ ",$PARTS," == *",$1,"* ]]; }

# part NAME TIMEOUT_S CMD...: runs CMD under its own timeout, its output in logs/NAME.log, one row of parts.tsv
part() {
    local name=$1 limit=$2 start rc; shift 2
    if [ "$limit" -le 5 ]; then printf '%s\tskipped\t-\t0\tno time left\n' "$name" >>"$work/parts.tsv"; return; fi
    echo "== $name (timeout ${limit}s): $(echo "$*" | head -c 200 | tr '\n' ' ')"
    start=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a function of this script (exported below): run it in a bash of its own
        timeout -k 10 "$limit" bash -c '"$@"' _ "$@" >"$work/logs/$name.log" 2>&1; rc=$?
    else
        timeout -k 10 "$limit" "$@" >"$work/logs/$name.log" 2>&1; rc=$?
    fi
    local status=passed; [ $rc = 124 ] || [ $rc = 137 ] && status=timeout; [ $rc != 0 ] && [ $status = passed ] && status=failed
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - start))" "$(tail -n 1 "$work/logs/$name.log" | tr '\t' ' ' | cut -c1-200)" >>"$work/parts.tsv"
    echo "   $status (rc $rc, $(($(date +%s) - start)) s)"
}
skip() { printf '%s\tskipped\t-\t0\t%s\n' "$1" "$2" >>"$work/parts.tsv"; echo "== $1 skipped: $2"; }

part device 60 python3 -c "
import json, torch
from asd_policy.bench.harness import describe_machine
d = torch.device('$DEV')
assert d.type != 'cuda' or torch.cuda.is_available(), 'no CUDA device visible to torch'
name = torch.cuda.get_device_name(0) if d.type == 'cuda' else 'cpu-tiny'
slug = next((g for g in ('h200', 'h100', 'a100', 'l40s', 'l4') if g in name.lower()), name.lower().replace(' ', '-'))
json.dump({'description': describe_machine(d), 'name': name, 'slug': slug}, open('$work/device.json', 'w'))
print(describe_machine(d))"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv >"$work/logs/nvidia-smi.txt" 2>&1 || true

# ---- 1. timing, alone on the GPU: each checkpoint's own network on its recorded conditioning -
if want timing; then
    for ck in $CKPTS; do
        name=$(basename "$ck"); cond=()
        [ -f "$CARRY/cond/$name.safetensors" ] && cond=(--cond "$CARRY/cond/$name.safetensors")
        part "timing-$name" "$(( $(left) < 45 ? $(left) : 45 ))" python3 scripts/bench_latency.py --device "$DEV" --checkpoint "$ck" \
            "${cond[@]}" --models random --batch $BATCH --L $LS --anchors reuse --repeats "$REPEATS" --row-cost $ROWS \
            --json "$work/timing/$name.json" --markdown "$work/timing/$name.md"
    done
fi

# ---- 2. serving, alone on the GPU: batching across 1..64 clients ------------------------------
pids=()
if want serving; then
    part serving "$(( $(left) < 130 ? $(left) : 130 ))" python3 scripts/bench_serving.py --device "$DEV" --checkpoint checkpoints/lift \
        $SERVE --json "$work/serving/serving-lift.json" &
    pids+=($!)
    if [ "$TINY" != 1 ]; then wait "${pids[@]}"; pids=(); fi  # alone on the GPU; a CPU rehearsal times nothing worth keeping apart
fi

# ---- 3.-5. training and the CUDA exactness tests share the GPU for the time that is left ------
train_run() {  # train_run NAME DATASET TASK STEPS EXTRA...: python -m asd_policy.training, no hydra
    local name=$1 data=$2 task=$3 steps=$4; shift 4
    # exec: timeout's SIGTERM then reaches the training itself, which saves the step it is on and stops
    exec python3 -m asd_policy.training --dataset "$data" --out "$work/train/$name" --task "$task" --steps "$steps" \
        --device "$DEV" --logger none --no-progress --log-every 50 --val-every 500 "$@"
}
image_run() {  # collect the camera demos here (the simulator renders on the GPU), then train on them
    python3 -c "
from asd_policy.data.collect import collect
print(collect('$IMAGE_TASK', $IMAGE_DEMOS, seed=0, output='$work/data/${IMAGE_TASK}_image.hdf5', progress=False,
              env_overrides={'cameras': '$IMAGE_CAMERAS'.split(), 'image_size': $IMAGE_SIZE}).line())" &&
    train_run "${IMAGE_TASK}_image" "$work/data/${IMAGE_TASK}_image.hdf5" "$IMAGE_TASK" "$IMAGE_STEPS" \
        --task-cameras $IMAGE_CAMERAS --task-image-size "$IMAGE_SIZE" --vision "$VISION" $IMAGE_TRAIN
}
export -f train_run image_run
mkdir -p "$work/data"
square_data="$CARRY/data/$SQUARE_TASK.hdf5"
if [ "$TINY" = 1 ] && want train && [ ! -f "$square_data" ]; then  # the toy run collects its own two demonstrations
    square_data="$work/data/$SQUARE_TASK.hdf5"
    python3 -c "from asd_policy.data.collect import collect; collect('$SQUARE_TASK', 2, seed=0, output='$square_data', progress=False)" \
        >"$work/logs/collect-tiny.log" 2>&1
fi
if want exactness; then part exactness "$(left)" python3 -m pytest -q -p no:cacheprovider $TESTS & pids+=($!); fi
if want train; then
    if [ -f "$square_data" ]; then
        part "train-${SQUARE_TASK}_small" "$(left)" train_run "${SQUARE_TASK}_small" "$square_data" "$SQUARE_TASK" "$SQUARE_STEPS" $TRAIN & pids+=($!)
        if [ "$CHI_STEPS" -gt 0 ]; then
            part "train-${SQUARE_TASK}_chi" "$(left)" train_run "${SQUARE_TASK}_chi" "$square_data" "$SQUARE_TASK" "$CHI_STEPS" $TRAIN --size chi & pids+=($!)
        fi
    else
        skip train "no $square_data (run scripts/gpu_prepare.sh here and carry $CARRY)"
    fi
fi
if want image; then
    if python3 -c "import asd_envs; asd_envs.make_env('$IMAGE_TASK').close()" >"$work/logs/image-check.log" 2>&1; then
        part "image-${IMAGE_TASK}" "$(left)" image_run & pids+=($!)
    else
        skip "image-${IMAGE_TASK}" "the $IMAGE_TASK simulator does not load here: $(tail -n 1 "$work/logs/image-check.log" | cut -c1-160)"
    fi
fi
for p in "${pids[@]}"; do wait "$p"; done

# ---- pack: a float16 copy of each trained small checkpoint, the rest in one archive -----------
for run in "$work"/train/*/; do
    run=$(basename "$run")
    [ -f "$work/train/$run/checkpoint/policy.json" ] || continue
    size=$(du -sm "$work/train/$run/checkpoint" | cut -f1)
    if [ "$size" -gt 40 ]; then  # a chi checkpoint (262 MB): over what a call brings back; its metrics still come
        echo "$run: checkpoint of ${size} MB stays on the device" >>"$work/logs/pack.log"; continue
    fi
    python3 scripts/ship_checkpoint.py "$work/train/$run/checkpoint" "$work/ship/$run" \
        --dataset "scripts/gpu_session.sh (GPU session): see its manifest" >>"$work/logs/pack.log" 2>&1 &&
        tar -C "$work/ship" -czf "$out/checkpoint-$run.tar.gz" "$run"
done
for run in "$work"/train/*/; do [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$work/train/$(basename "$run")-metrics.jsonl"; done
python3 - "$work" "$out" "$t0" "$TINY" "$PARTS" <<'PY'
import json, sys, time
from pathlib import Path
work, out, t0, tiny, parts = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
rows = [line.split("\t") for line in (work / "parts.tsv").read_text().splitlines() if line]
device = json.loads((work / "device.json").read_text()) if (work / "device.json").exists() else {}
manifest = {"device": device, "tiny": tiny, "parts_asked": parts.split(","), "wall_s": int(time.time()) - t0,
            "parts": [{"name": n, "status": s, "rc": rc, "seconds": int(sec), "last_line": last} for n, s, rc, sec, last in rows],
            "checkpoints": sorted(p.name for p in out.glob("checkpoint-*.tar.gz"))}
(work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
(out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
for p in manifest["parts"]:
    print(f"{p['status']:8s} {p['name']:28s} {p['seconds']:4d} s  {p['last_line'][:90]}")
PY
tar -C "$work" -czf "$out/results.tar.gz" manifest.json device.json parts.tsv logs timing serving exactness \
    $(cd "$work" && ls train/*-metrics.jsonl 2>/dev/null) 2>/dev/null
echo "done in $(($(date +%s) - t0)) s: $(ls "$out" | tr '\n' ' ')"
