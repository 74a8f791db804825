#!/usr/bin/env bash
# Prepare, on this CPU, what scripts/gpu_session.sh needs on the GPU machine, in gpu-carry/ (ignored
# by git; name it in the device tool's carry). See docs/gpu-session.md.
#   gpu-carry/wheels/  the Python packages the device image lacks (websockets, hydra: the serving part)
#   gpu-carry/data/    square's demonstrations (the shipped card's own command)
#   gpu-carry/cond/    each checkpoint's conditioning rows at held-out starts of its task, so that
#                      the timing there has the trained policy's own acceptance (no simulator there)
# Then it says whether the working tree and gpu-carry fit what one call takes (64 MiB).
#   bash scripts/gpu_prepare.sh          # SQUARE_DEMOS=100 (the shipped card's), COND_ROWS=16
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-gpu-carry}
mkdir -p "$CARRY"/{wheels,data,cond}
export PYTHONUNBUFFERED=1

# what the serving part needs and the device image lacks (numpy, msgpack, h5py, safetensors, pyyaml are
# there): websockets for its Python 3.12; hydra for scripts/serve.py (pure Python); the versions installed here
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" "websockets==$(version websockets)" || echo "warning: no websockets wheel; the serving part will fail there"
python3 -m pip wheel -q --no-deps -w "$CARRY/wheels" "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
    "antlr4-python3-runtime==$(version antlr4-python3-runtime)" || echo "warning: no hydra wheels; the serving part will fail there"
# (pip wheel: antlr4's runtime is published as source only; built here, pure Python, it installs there without a build)

if [ ! -f "$CARRY/data/square.hdf5" ]; then
    python3 scripts/collect.py task=square num_demos="${SQUARE_DEMOS:-100}" seed=0 output="$CARRY/data/square-raw.hdf5" progress=false &&
    python3 - "$CARRY/data/square-raw.hdf5" "$CARRY/data/square.hdf5" <<'PY' && rm "$CARRY/data/square-raw.hdf5"
# what training reads, nothing more (the carry limit counts bytes): each demo's actions, rewards, dones and
# the task's observation keys (data attribute asd_obs_keys), the train/valid masks, the attributes but each
# demo's 48 kB MuJoCo model; not next_obs, states or the other observation keys
import json, sys, h5py
with h5py.File(sys.argv[1], "r") as src, h5py.File(sys.argv[2], "w") as dst:
    src.copy("mask", dst)
    data = dst.require_group("data")
    data.attrs.update(src["data"].attrs)
    for demo, group in src["data"].items():
        out = data.require_group(demo)
        out.attrs.update({k: v for k, v in group.attrs.items() if k != "model_file"})
        for name in ("actions", "rewards", "dones", *(f"obs/{k}" for k in json.loads(src["data"].attrs["asd_obs_keys"]))):
            src.copy(group[name], out, name=name)
PY
fi

for ck in checkpoints/*/; do
    name=$(basename "$ck")
    task=(); [[ $name == *_lerobot ]] && task=(--task "${name%_lerobot}")  # a LeRobot checkpoint records no task
    [ -f "$CARRY/cond/$name.safetensors" ] || python3 scripts/bench_latency.py --checkpoint "$ck" "${task[@]}" \
        --save-cond "$CARRY/cond/$name.safetensors" --cond-rows "${COND_ROWS:-16}" || echo "warning: no conditioning rows for $name"
done

# what one device call sends: tracked files, untracked files git does not ignore, and the carry
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ {s += $1} END {print s}')
carry=$(du -sb "$CARRY" | cut -f1)
limit=$((64 * 1024 * 1024))
echo "working tree $((tree / 1048576)) MiB + $CARRY $((carry / 1048576)) MiB = $(((tree + carry) / 1048576)) MiB of the 64 MiB one call takes"
if [ $((tree + carry)) -gt $limit ]; then
    echo "TOO LARGE for one device call: run 'bash scripts/gpu_slim.sh on' first (and 'off' after the call; docs/gpu-session.md, 'What travels')"
    exit 3
fi
