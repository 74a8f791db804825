#!/usr/bin/env bash
# The prepared GPU check, one command: exactness tests on CUDA, then the latency benchmark.
# Needs only a CUDA PyTorch and pytest (no network, no install: the package runs from this checkout).
# Usage: bash scripts/gpu_bench.sh [OUTPUT_DIR]     (default: bench-out/). Finishes within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/device.txt" || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv >>"$out/device.txt" 2>&1

echo "== exactness tests on CUDA (graph replay == eager; ASD through CUDA graphs matches DDPM)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fast.py tests/test_sampling.py 2>&1 | tee "$out/exactness.txt"

echo "== latency benchmark (fp32), chi U-Net"
timeout 270 python3 scripts/bench_latency.py --size chi --batch 1 8 28 --repeats 7 \
    --json "$out/latency.json" --markdown "$out/latency.md" 2>&1 | tee "$out/latency.log"

echo "== latency benchmark, bf16 autocast (a change of the model, not of the sampler), batch 1"
timeout 60 python3 scripts/bench_latency.py --size chi --batch 1 --repeats 7 --variants graph --models exact --L 16 32 --anchors reuse \
    --bf16 --json "$out/latency-bf16.json" --markdown "$out/latency-bf16.md" 2>&1 | tee "$out/latency-bf16.log"
echo "done: results in $out/"
