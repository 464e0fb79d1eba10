#!/usr/bin/env bash
# gpu_bench.py's LMTP workload under server variants, and step_profile.py, in one GPU session:
#   bash benchmarks/gpu_variants.sh
set -u
cd "$(dirname "$0")/.."
run() {
    echo "== $*"
    timeout 300 python3 benchmarks/gpu_bench.py --skip-hf "$@" 2>&1 | grep "^| lmtp\|^| local"
}
run
timeout 120 python3 benchmarks/step_profile.py --batches 1,64 2>&1 | grep "^|"
run --streams 1 --skip-local --compile True --max_batch 1
