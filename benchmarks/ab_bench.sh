#!/usr/bin/env bash
# A/B of the serving path on one GPU machine: this tree against an older commit's, alternating
# servers (old, new, old, new, ...), 64 streams over LMTP four times per server.
#   git archive COMMIT src plugins/hf/src | tar -x -C .ab/old     (here; carry .ab to the device)
#   bash benchmarks/ab_bench.sh .ab/old [ROUNDS] [HOGS]
# HOGS > 0 starts that many busy-looping processes for the whole run: a host whose cores are
# shared with other work, where the engine thread and the event loop get less CPU.
set -u
cd "$(dirname "$0")/.."
old=$(realpath "$1"); rounds=${2:-2}; hogs=${3:-0}
pids=()
for _ in $(seq 1 "$hogs"); do python3 -c "while True: pass" & pids+=($!); done
trap '[ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null' EXIT
for round in $(seq 1 "$rounds"); do
    for tree in old new; do
        if [ $tree = old ]; then path="$old/src:$old/plugins/hf/src"; else path="$PWD/src:$PWD/plugins/hf/src"; fi
        echo "== round $round: $tree (hogs: $hogs)"
        PYTHONPATH=$path timeout 240 python3 benchmarks/gpu_bench.py --streams 64,64,64,64 --skip-local \
            --skip-hf 2>&1 | grep "^| lmtp"
    done
done
