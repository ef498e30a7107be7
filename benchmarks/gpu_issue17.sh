#!/usr/bin/env bash
# Issue 17 (GPU speed), the one-go run for a lent GPU.  EXPECTED RUN TIME: steps 0-2 about 3-5 minutes on an
# H100/H200 (weights about 0.5-1 min when not cached in $WEIGHTS_DIR, each profile 1-2 min); step 3, the existing
# gpu_checks.sh, adds its own 6-8 minutes (10-13 min in all).  GPU_CHECKS=0 skips step 3: use that when one command
# may run at most 10 minutes, and run gpu_checks.sh as a second command.
#   0. nvidia-smi and the versions;
#   1. the full-size networks regenerated once from the parity manifest into $WEIGHTS_DIR (reused by step 3);
#   2. benchmarks/profile_stages.py at 1 and 16 faces, float16 then float32 (torch.profiler, per stage: wall time,
#      CUDA kernel time, launch-bound share, kernel counts, top kernels, GFLOP; Chrome traces in OUT/traces);
#   3. bash benchmarks/gpu_checks.sh OUT/checks (parity, CUDA tests, benchmark; the existing script).
# Every step runs under `timeout` and logs into OUT; a failed step makes the exit status 1, the others still run.
# Usage: bash benchmarks/gpu_issue17.sh OUT_DIR        (fixtures from $VSPBFR_SHARED, default ../shared)
set -u -o pipefail
OUT=${1:?usage: gpu_issue17.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
export VSPBFR_SHARED=${VSPBFR_SHARED:-$(cd "$HERE/../.." && pwd)/shared}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
W=${WEIGHTS_DIR:-/tmp/vspbfr_gpu_weights}
export WEIGHTS_DIR=$W
REPEATS=${REPEATS:-3}
status=0
t_start=$(date +%s)
: >"$OUT/steps.txt"

step() {  # step NAME SECONDS LOG command...: run under timeout, log, remember a failure
    local name=$1 secs=$2 log=$3; shift 3
    local t0=$(date +%s) rc
    echo "== $name (limit ${secs}s)" | tee -a "$OUT/steps.txt"
    timeout "$secs" "$@" >"$log" 2>&1
    rc=$?
    echo "   $name: exit $rc after $(( $(date +%s) - t0 )) s (log: $log)" | tee -a "$OUT/steps.txt"
    [ $rc -eq 0 ] || status=1
}

{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
  git log -1 --oneline 2>/dev/null; nproc; date -u; } >"$OUT/gpu.txt" 2>&1 || status=1
cat "$OUT/gpu.txt"

step "1. weights" 300 "$OUT/weights.log" \
    $PY benchmarks/profile_stages.py --weights full --weights-dir "$W" --only-weights

for dt in float16 float32; do
    step "2. profile $dt, 1 and 16 faces" 300 "$OUT/profile_$dt.log" \
        $PY benchmarks/profile_stages.py --device cuda --dtypes "$dt" --faces 1 16 --weights full --weights-dir "$W" \
            --repeats "$REPEATS" --warmup 1 --json "$OUT/profile_$dt.json" --trace "$OUT/traces"
    grep -v '^\(USDT\|ERROR\|WARNING\):' "$OUT/profile_$dt.log" | grep -v '^profiling\|^weights:' || true
done

if [ "${GPU_CHECKS:-1}" != 0 ]; then
    step "3. gpu_checks.sh" 1500 "$OUT/gpu_checks.log" bash benchmarks/gpu_checks.sh "$OUT/checks"
    tail -60 "$OUT/gpu_checks.log"
fi
echo "all steps done in $(( $(date +%s) - t_start )) s, exit $status" | tee -a "$OUT/steps.txt"
exit $status
