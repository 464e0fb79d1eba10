#!/usr/bin/env bash
# One GPU session's worth of checks and numbers for benchmarks/RESULTS.md:
#   bash benchmarks/gpu_variants.sh
set -u
cd "$(dirname "$0")/.."
timeout 150 python3 scripts/gpu_check.py 2>&1 | grep "equal\|OK\|MISMATCH"
echo "== step_profile"
timeout 150 python3 benchmarks/step_profile.py --batches 1,8,32,64 2>&1 | grep "^|"
echo "== gpu_bench"
timeout 360 python3 benchmarks/gpu_bench.py 2>&1 | grep "^|"
echo "== gpu_bench --compile True --max_batch 1"
timeout 200 python3 benchmarks/gpu_bench.py --streams 1 --skip-local --skip-hf --compile True --max_batch 1 2>&1 | grep "^| lmtp"
