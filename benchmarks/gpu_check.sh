#!/usr/bin/env bash
# The one script for a CUDA machine: build in place for this card's arch, measure the card's
# ceilings, run the GPU tests, run the GPU benchmarks. Logs and JSON go to $OUT (or
# ./gpu_check_out); at most a handful of files, so a lease's file limit is never hit.
#
# Everything runs under one deadline (GPU_CHECK_SECONDS, default 560 s) so the script always
# finishes and writes its summary inside a device call's time limit. Each test file and each
# benchmarked op runs in its own process: a kernel fault poisons a CUDA context, and must not
# take the other ops' results with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
LOGS=$(mktemp -d)
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-560} ))
budget() {  # budget CAP: seconds for the next step, at most CAP, leaving 20 s for the wrap-up
  local left=$(( DEADLINE - $(date +%s) - 20 ))
  (( left < $1 )) && echo "$left" || echo "$1"
}
summary="$OUT/summary.txt"

arch=$(python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
{
  echo "card=$card arch=sm_$arch date=$(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$summary"

# Python packages the card's image lacks travel as wheels in .whl/ (see the device notes).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

start=$(date +%s)
FMKIT_CUDA=ON FMKIT_CUDA_ARCHS="$arch" python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start ))s" | tee -a "$summary"
[ $build_rc -eq 0 ] || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m fmkit.cli info | tee -a "$summary"
[ "${GPU_CEILINGS:-1}" = 1 ] && timeout "$(budget 60)" python3 benchmarks/gpu_ceilings.py 2>&1 | tee -a "$summary"

# Tests: one process per file, all at once (Triton compiles are CPU-bound; 16 cores).
timeout_flag=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=150")
test_budget=$(budget 200)
# GPU_TESTS: "file:marker" words (an empty marker runs the whole file; a marker may also be a -k
# expression written as k=EXPR).
for spec in ${GPU_TESTS:-test_clip_loss_triton.py: test_flamingo_triton.py: test_knn.py:gpu test_pgd_step.py:gpu \
             test_gaussian_kde.py:gpu test_cluster.py:gpu test_calibration_metrics.py:gpu test_clip.py:k=open_clip}; do
  file=${spec%%:*}; mark=${spec#*:}
  select=()
  case "$mark" in
    "") ;;
    k=*) select=(-k "${mark#k=}") ;;
    *) select=(-m "$mark") ;;
  esac
  (
    timeout "$test_budget" python3 -m pytest -q -p no:cacheprovider $timeout_flag "${select[@]}" \
      "tests/$file" >"$LOGS/${file%.py}.log" 2>&1
    echo "$file rc=$?" >"$LOGS/${file%.py}.rc"
  ) &
done
wait
for log in "$LOGS"/test_*.log; do
  echo "===== $(basename "$log")"; cat "$log"
done >"$OUT/pytest_gpu.log"
for rc in "$LOGS"/test_*.rc; do
  name=$(basename "$rc" .rc)
  echo "$(cat "$rc") | $(grep -E '(passed|failed|error|skipped)' "$LOGS/$name.log" | tail -1)"
done | tee -a "$summary"

# GPU_EXTRA: one more command (e.g. a kernel's profiling script), logged to extra.log.
if [ -n "${GPU_EXTRA:-}" ]; then
  timeout "$(budget 120)" bash -c "$GPU_EXTRA" >"$OUT/extra.log" 2>&1
  echo "extra rc=$? ($GPU_EXTRA)" | tee -a "$summary"
  tail -40 "$OUT/extra.log"
fi

# Benchmarks: one op per process, most important first, each capped so the rest still run.
# GPU_BENCH: "op:quick|full:seconds" words.
for spec in ${GPU_BENCH:-knn:full:110 contrastive:full:100 flamingo:full:80 pgd_step:full:35 \
            calibration:full:60 kmeans:quick:45}; do
  IFS=: read -r op mode cap <<<"$spec"
  t=$(budget "$cap")
  if (( t < 15 )); then echo "bench $op skipped: out of time" | tee -a "$summary"; continue; fi
  flag=""; [ "$mode" = quick ] && flag="--quick"
  echo "===== bench $op ($mode, ${t}s)" >>"$OUT/bench.log"
  timeout "$t" python3 -m fmkit.cli bench $flag --op "$op" --device cuda --json "$LOGS/bench_$op.json" \
    >>"$OUT/bench.log" 2>&1
  echo "bench $op rc=$?" | tee -a "$summary"
done

python3 - "$LOGS" "$OUT/$card.json" <<'EOF' | tee -a "$summary"
import glob, json, sys
logs, out = sys.argv[1:]
meta, rows = None, []
for path in sorted(glob.glob(f"{logs}/bench_*.json")):
    data = json.load(open(path))
    meta = meta or data["meta"]
    meta.setdefault("gemm_peak_gflops", {}).update(data["meta"]["gemm_peak_gflops"])
    rows += data["rows"]
json.dump({"meta": meta, "rows": rows}, open(out, "w"), indent=1)
print(f"{'op':<12} {'shape':<36} {'contender':<24} {'ms':>9} {'vs anchor':>9} {'%peak':>6}  note")
for r in rows:
    note = r.get("error") or ("" if r["exact"] is None else ("exact" if r["exact"] else "NOT exact"))
    print(f"{r['op']:<12} {r['shape'][:36]:<36} {r['contender'][:24]:<24} {r['median_ms']:>9.3f} "
          f"{r['speedup_vs_best_anchor']:>8.2f}x {r['pct_peak']:>6.1f}  {note[:120]}")
EOF
