#!/usr/bin/env bash
# The LMTP workload of gpu_bench.py under server variants, in one GPU session:
#   bash benchmarks/gpu_variants.sh
# Python's GIL switch interval is set in the server process through a sitecustomize module.
set -u
cd "$(dirname "$0")/.."
run() {
    echo "== $*"
    timeout 240 python3 benchmarks/gpu_bench.py --skip-local --skip-hf "$@" 2>&1 | grep "^| lmtp"
}
run --streams 1,64
switch=$(mktemp -d)
echo "import sys; sys.setswitchinterval(0.00005)" > "$switch/sitecustomize.py"
echo "== GIL switch interval 50 us"
PYTHONPATH=$switch run --streams 1,64
timeout 120 python3 benchmarks/step_profile.py --batches 1,64 2>&1 | grep "^|"
run --streams 1 --compile True --max_batch 1
run --streams 1 --compile max-autotune-no-cudagraphs --max_batch 1
