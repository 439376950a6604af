#!/usr/bin/env bash
# The one script for a CUDA machine: build in place for this card's arch, run the GPU
# tests, run the GPU benchmarks; logs and JSON go to $OUT (or ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
arch=$(python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
echo "card=$card arch=sm_$arch" | tee "$OUT/summary.txt"
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv | tee -a "$OUT/summary.txt"

start=$(date +%s)
FMKIT_CUDA=ON FMKIT_CUDA_ARCHS="$arch" python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
[ $build_rc -eq 0 ] || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m fmkit.cli info | tee -a "$OUT/summary.txt"

timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests -x -p no:cacheprovider >"$OUT/pytest_gpu.log" 2>&1
echo "pytest -m gpu rc=$?" | tee -a "$OUT/summary.txt"
tail -15 "$OUT/pytest_gpu.log"

timeout "${BENCH_TIMEOUT:-330}" python3 -m fmkit.cli bench ${BENCH_ARGS:-} --device cuda --json "$OUT/$card.json" 2>&1 | tee "$OUT/bench.log"
echo "bench rc=${PIPESTATUS[0]}" | tee -a "$OUT/summary.txt"
