#!/usr/bin/env bash
# Checks, step profiles with and without the fused modules, gpu_bench.py's workloads, and the
# compiled forward at one stream, in one GPU session:   bash benchmarks/gpu_variants.sh
set -u
cd "$(dirname "$0")/.."
timeout 150 python3 scripts/gpu_check.py 2>&1 | grep "equal\|OK\|MISMATCH"
echo "== step_profile"
timeout 150 python3 benchmarks/step_profile.py --batches 1,8,64 --kernels 2>&1 | grep "^|\|^batch\|^  "
echo "== step_profile --option fuse_kernels=False"
timeout 100 python3 benchmarks/step_profile.py --batches 1,8,64 --option fuse_kernels=False 2>&1 | grep "^|"
echo "== gpu_bench"
timeout 300 python3 benchmarks/gpu_bench.py --skip-hf 2>&1 | grep "^| lmtp\|^| local"
echo "== gpu_bench --compile True --max_batch 1"
timeout 200 python3 benchmarks/gpu_bench.py --streams 1 --skip-local --skip-hf --compile True --max_batch 1 2>&1 | grep "^| lmtp"
