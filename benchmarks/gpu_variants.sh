#!/usr/bin/env bash
# gpu_bench.py's workloads, step_profile.py, and the compiled forward, in one GPU session:
#   bash benchmarks/gpu_variants.sh
set -u
cd "$(dirname "$0")/.."
run() {
    echo "== gpu_bench $*"
    timeout 300 python3 benchmarks/gpu_bench.py --skip-hf "$@" 2>&1 | grep "^| lmtp\|^| local"
}
run
echo "== step_profile"
timeout 120 python3 benchmarks/step_profile.py --batches 1,64 2>&1 | grep "^|"
run --streams 1 --skip-local --compile True --max_batch 1
echo "== step_profile, compiled, every batch bucket"
timeout 400 python3 benchmarks/step_profile.py --batches 1,8,64 --option compile=True 2>&1 | grep "^|\|ready in"
