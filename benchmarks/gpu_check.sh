#!/usr/bin/env bash
# The one script for a CUDA machine: build in place for this card's arch, measure the card's
# ceilings, run the whole test suite, a kernel sweep (GPU_EXTRA), then the GPU benchmarks.
# Logs and JSON go to $OUT (or ./gpu_check_out), named by commit (FMKIT_COMMIT, since the
# device's copy of the tree has no .git): summary, pytest log, extra log, bench log and the
# merged JSON; few files, so a lease's file limit is never hit.
#
# Everything runs under one deadline (GPU_CHECK_SECONDS, default 560 s) so the script always
# finishes and writes its summary inside a device call's time limit. Each benchmarked op runs
# in its own process: a kernel fault poisons a CUDA context, and must not take the other ops'
# results with it (pytest-xdist workers likewise isolate the tests).
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
commit=${FMKIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
summary="$OUT/summary-$commit.txt"

arch=$(python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
{
  echo "card=$card arch=sm_$arch commit=$commit date=$(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$summary"

# Python packages the card's image lacks travel as wheels in .whl/ (see the device notes).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

start=$(date +%s)
FMKIT_CUDA=ON FMKIT_CUDA_ARCHS="$arch" python3 -m pip install --no-build-isolation --no-deps -e . >"$LOGS/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start ))s" | tee -a "$summary"
[ $build_rc -eq 0 ] || { tail -50 "$LOGS/build.log"; cp "$LOGS/build.log" "$OUT/"; exit 1; }
python3 -m fmkit.cli info | tee -a "$summary"
[ "${GPU_CEILINGS:-1}" = 1 ] && timeout "$(budget 25)" python3 benchmarks/gpu_ceilings.py 2>&1 | tee -a "$summary"

# Tests: the whole suite, as the README runs it (plus the slow set), in one pytest-xdist run;
# GPU_TESTS_LAST=1 runs them after the benchmarks (when the benchmarks matter more for a short call).
run_tests() {
  timeout_flag=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=150")
  workers=$(( $(nproc) > 14 ? 14 : $(nproc) ))
  test_select=${GPU_TESTS_MARK:-}  # e.g. "not slow"; empty runs every test
  start=$(date +%s)
  # GPU_TEST_PATHS: test files to run instead of the whole tests/ folder (e.g. a re-run of failures).
  # -v: each result is logged as it completes, so a run cut off by its budget still shows them.
  timeout "$(budget ${GPU_TESTS_SECONDS:-140})" python3 -m pytest -v --durations=15 -p no:cacheprovider -n "$workers" $timeout_flag \
    ${test_select:+-m "$test_select"} -rfEs ${GPU_TEST_PATHS:-tests} >"$OUT/pytest-$commit.log" 2>&1
  echo "pytest ${GPU_TEST_PATHS:-tests}${test_select:+ -m \"$test_select\"} rc=$? in $(( $(date +%s) - start ))s | $(grep -E '[0-9]+ (passed|failed)' "$OUT/pytest-$commit.log" | tail -1)" | tee -a "$summary"
  grep -E '(FAILED|ERROR) tests/' "$OUT/pytest-$commit.log" | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | head -60 | tee -a "$summary"
}
[ "${GPU_TESTS_LAST:-0}" = 1 ] || run_tests

# GPU_EXTRA: one more command (e.g. a kernel's profiling script), logged to extra.log.
# The default: the pgd L-inf kernel A/B and the tile sweep of the kNN tensor-core kernel.
# GPU_EXTRA=none skips it.
GPU_EXTRA=${GPU_EXTRA:-"python3 benchmarks/gpu_pgd_linf_ab.py 4300; FMKIT_PGD_LINF_SCALAR=1 python3 benchmarks/gpu_pgd_linf_ab.py 4300; SWEEP_SECONDS=45 SWEEP_SHAPES=0 python3 benchmarks/gpu_knn_tc_sweep.py"}
if [ "$GPU_EXTRA" != none ]; then
  timeout "$(budget 75)" bash -c "$GPU_EXTRA" >"$OUT/extra-$commit.log" 2>&1
  echo "extra rc=$? ($GPU_EXTRA)" | tee -a "$summary"
  tail -40 "$OUT/extra-$commit.log"
fi

# Benchmarks: one op per process, most important first, each capped so the rest still run.
# GPU_BENCH: "op:quick|full:seconds" words.
for spec in ${GPU_BENCH:-knn:full:85 contrastive:full:70 flamingo:full:70 pgd_step:full:30 \
            calibration:full:45 kmeans:quick:35}; do
  IFS=: read -r op mode cap <<<"$spec"
  t=$(budget "$cap")
  if (( t < 15 )); then echo "bench $op skipped: out of time" | tee -a "$summary"; continue; fi
  flag=""; [ "$mode" = quick ] && flag="--quick"
  echo "===== bench $op ($mode, ${t}s)" >>"$OUT/bench-$commit.log"
  timeout "$t" python3 -m fmkit.cli bench $flag --op "$op" --device cuda --json "$LOGS/bench_$op.json" \
    >>"$OUT/bench-$commit.log" 2>&1
  echo "bench $op rc=$?" | tee -a "$summary"
done

[ "${GPU_TESTS_LAST:-0}" = 1 ] && run_tests

python3 - "$LOGS" "$OUT/$card-$commit.json" "$commit" <<'EOF' | tee -a "$summary"
import glob, json, sys
logs, out, commit = sys.argv[1:]
meta, rows = None, []
for path in sorted(glob.glob(f"{logs}/bench_*.json")):
    data = json.load(open(path))
    meta = meta or data["meta"]
    meta.setdefault("gemm_peak_gflops", {}).update(data["meta"]["gemm_peak_gflops"])
    rows += data["rows"]
if meta is not None:
    meta["commit"] = commit  # the device's copy of the tree has no .git: the caller names the commit
json.dump({"meta": meta, "rows": rows}, open(out, "w"), indent=1)
from fmkit.bench import format_table
print("\n".join(format_table(rows)))
EOF
