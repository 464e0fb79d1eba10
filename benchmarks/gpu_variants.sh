#!/usr/bin/env bash
# One GPU session's worth of checks and numbers for benchmarks/RESULTS.md:
#   bash benchmarks/gpu_variants.sh [--no-check]
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--no-check" ]; then
    timeout 150 python3 scripts/gpu_check.py 2>&1 | grep "decode\|equal\|OK\|MISMATCH"
fi
echo "== gemv_bench"
timeout 100 python3 benchmarks/gemv_bench.py 2>&1 | grep "^|\|copy"
echo "== step_profile"
timeout 150 python3 benchmarks/step_profile.py --batches 1,8,32,64 2>&1 | grep "^|"
echo "== gpu_bench"
timeout 300 python3 benchmarks/gpu_bench.py --streams 1,8,32,64,64,64,64 --skip-hf 2>&1 | grep "^|"
echo "== gpu_bench --compile True --max_batch 1"
timeout 200 python3 benchmarks/gpu_bench.py --streams 1,1,1 --skip-local --skip-hf --compile True --max_batch 1 2>&1 | grep "^| lmtp"
