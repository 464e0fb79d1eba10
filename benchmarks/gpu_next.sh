#!/usr/bin/env bash
# The GPU checks and numbers still owed to issues 29, 31 and 32 (benchmarks/RESULTS.md, top
# sections), in device calls of under ten minutes each, from the repository root:
#
#   run(command="bash benchmarks/gpu_next.sh 1", carry=[".whl"])   # CUDA tests, issues 31 and 29
#   run(command="bash benchmarks/gpu_next.sh 2", carry=[".whl"])   # gpu_check, issues 29, 31 (c), 32
#   run(command="bash benchmarks/gpu_next.sh 3", carry=[".whl"])   # issue 32: start-up, first runs
#   run(command="bash benchmarks/gpu_next.sh 4", carry=[".whl"])   # issues 29, 31 (a): joins batched
#   run(command="bash benchmarks/gpu_next.sh 5", carry=[".whl"])   # the same against .whl/base/src
#   (5's baseline: `mkdir -p .whl/base && git archive COMMIT src | tar -x -C .whl/base`)
#   run(command="bash benchmarks/gpu_next.sh 6", carry=[".whl"])   # 3's first and third steps
#   run(command="bash benchmarks/gpu_next.sh 7", carry=[".whl"])   # main's OpenAI runs, then .whl/var/*/src's
#   run(command="bash benchmarks/gpu_next.sh 8", carry=[".whl"])   # main's OpenAI runs, 4 rounds
#   run(command="bash benchmarks/gpu_next.sh 9", carry=[".whl"])   # issue 31 (a), (b) in a steady window
#   run(command="bash benchmarks/gpu_next.sh 10", carry=[".whl"])  # issue 29: OpenAI front-end processes
#   run(command="bash benchmarks/gpu_next.sh 11", carry=[".whl"])  # issue 31 (b) with front-ends, mask threads
#   run(command="bash benchmarks/gpu_next.sh 12", carry=[".whl"])  # issue 31 (a): the engine thread's stacks
#   run(command="bash benchmarks/gpu_next.sh 13", carry=[".whl"])  # the pinned ring: tests, cost, (a) before/after
#   (13's baseline: `mkdir -p .whl/var/noring && git archive COMMIT src | tar -x -C .whl/var/noring`)
#   run(command="bash benchmarks/gpu_next.sh 14", carry=[".whl"])  # (a): before the ring, with it, af34be5
#   run(command="bash benchmarks/gpu_next.sh 15", carry=[".whl"])  # issue 32: covers' tests, start-up, first runs
#   run(command="bash benchmarks/gpu_next.sh 16", carry=[".whl"])  # gpu_check; first runs with every graph, qwen3
#   run(command="bash benchmarks/gpu_next.sh 18", carry=[".whl"])  # issue 32: many-row Llama layers: checks, steps
#   run(command="bash benchmarks/gpu_next.sh 19", carry=[".whl"])  # the same: served, against the plugin before
#   run(command="bash benchmarks/gpu_next.sh 20", carry=[".whl"])  # captures of two models in one process; gpu_check
#   run(command="bash benchmarks/gpu_next.sh 21", carry=[".whl"])  # GPT-2's many-row blocks against before
#   run(command="bash benchmarks/gpu_next.sh 22", carry=[".whl"])  # 20 and 21 in one call, the checks first
#   run(command="bash benchmarks/gpu_next.sh 23", carry=[".whl"])  # issue 32: offline and SCORE after the layers
#   run(command="bash benchmarks/gpu_next.sh 24", kind="nvidia-h200", carry=[".whl"])  # issue 32's table, part 1
#   run(command="bash benchmarks/gpu_next.sh 25", kind="nvidia-h200", carry=[".whl"])  # issue 32's table, part 2
#   run(command="bash benchmarks/gpu_next.sh 26", carry=[".whl"])  # dependent launches: checks, steps with and without
#   run(command="bash benchmarks/gpu_next.sh 27", carry=[".whl"])  # issue 32's table without LMQL 0.7.3, one call
#   run(command="bash benchmarks/gpu_next.sh 28", carry=[".whl"])  # RoPE in the attention kernel: checks, steps, served
#   run(command="bash benchmarks/gpu_next.sh 29", carry=[".whl"])  # the greedy choice in one kernel: check, one-stream steps
#   run(command="bash benchmarks/gpu_next.sh 30", carry=[".whl"])  # gpu_check; issue 31 (a), (b) windowed, stacks sampled
#   run(command="bash benchmarks/gpu_next.sh 31", carry=[".whl"])  # transfers with fewer torch calls: tests, checks, (a)/(b) against before
#   (31's baseline: `mkdir -p .whl/var/before && git archive 337e7f1 src | tar -x -C .whl/var/before`)
#   run(command="bash benchmarks/gpu_next.sh 32", carry=[".whl"])  # gpu_check; branch masked31's kernel: check, (a)/(b)
#   (32 builds its second tree itself: this one with benchmarks/variants/masked31/masked31.patch applied)
#   run(command="bash benchmarks/gpu_next.sh 33", carry=[".whl"])  # (a)/(b) at switch intervals 50 and 10 us, alternating
#   (33: benchmarks/variants/switch10/sitecustomize.py sets it where the server sets its own)
#   run(command="bash benchmarks/gpu_next.sh 34", carry=[".whl"])  # next holes in their last ones' caches: tests, (a) against before
#   (34's baseline: `mkdir -p .whl/var/main51 && git archive ba805f6 src | tar -x -C .whl/var/main51`)
#   run(command="bash benchmarks/gpu_next.sh 35", carry=[".whl"])  # (a)'s engine thread by function, stacks sampled
#   run(command="bash benchmarks/gpu_next.sh 36", carry=[".whl"])  # 34's CUDA tests, then 35
#   (issue 32's "Done when" is stated for an H200, with LMQL 0.7.3 in the same run: 24 and 25 collect it)
#   (18's, 19's and 21's baseline: `mkdir -p .whl/rows_before && git archive 00ba65f plugins/hf/src | tar -x -C .whl/rows_before`)
#
# (.whl: `bash benchmarks/fetch_llguidance_wheel.sh && bash benchmarks/fetch_lmql073_wheels.sh`; and
# `cp /tmp/lmql-bench-bpe-50257/tokenizer.json .whl/lmql-bench-bpe-50257.json` after any benchmark
# trained the GPT-2 shapes' tokenizer here, or the GPU machine trains it again, ~a minute.)
# Each command has its own time limit; the whole output goes to $OUT/gpu_next_N.log, the tables
# (lines starting with "|") and summaries to the terminal.
set -u
cd "$(dirname "$0")/.."
part=${1:?"which part: 1 or 2"}
out=${OUT:-/tmp/gpu-next}
mkdir -p "$out"
log="$out/gpu_next_$part.log"

step() {  # step LIMIT_S COMMAND...: run it under a limit, keep its output, show its tables
    local limit=$1 part_log
    shift
    part_log=$(mktemp)
    echo "== $* (limit ${limit} s)"
    timeout "$limit" "$@" >"$part_log" 2>&1
    echo "   exit $?"
    grep "^|\|^{\"transport\|OK\|MISMATCH\|passed\|failed\|steps not chained\|OpenAI/LMTP" "$part_log" | tail -n 30
    { echo "== $*"; cat "$part_log"; } >>"$log"
    rm -f "$part_log"
}

python3 -m pip install -q --no-deps --no-build-isolation . ./plugins/hf .whl/llguidance-*.whl

if [ "$part" = 1 ]; then  # the engine's new CUDA paths, then issue 31's and 29's points
    step 120 env LMQL_TEST_CUDA=1 python3 -m pytest -q tests/test_mask_staging.py tests/test_template_steps.py \
        tests/test_constraints_engine.py -k "cuda or side_by_side or forced_tokens_ride"
    step 200 python3 benchmarks/constraints_gpu.py --wheels .whl --out "$out/cons"
    # prompts admitted beside chained steps every third step (an experiment's knob, default off)
    step 80 env LMQL_ADMIT_EVERY=3 python3 benchmarks/constraints_gpu.py --only a
    step 100 python3 benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds 2 --processes 4
elif [ "$part" = 4 ]; then  # where an OpenAI burst's time goes; prompts joined every third step
    unset PYTHONDONTWRITEBYTECODE  # each server start after the first reads bytecode
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    python3 -c "import aiohttp, aiohttp.http_parser as p; print('aiohttp', aiohttp.__version__, p.HttpRequestParser)"
    nproc; lscpu | grep -i "model name\|thread(s) per core"
    step 110 python3 benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds 2 --processes 4
    step 100 python3 benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds 2 --processes 8
    step 100 env LMQL_ADMIT_EVERY=3 python3 benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 \
        --rounds 2 --processes 4
    step 90 python3 benchmarks/constraints_gpu.py --only a
    step 90 env LMQL_ADMIT_EVERY=3 python3 benchmarks/constraints_gpu.py --only a
elif [ "$part" = 5 ] || [ "$part" = 7 ] || [ "$part" = 8 ]; then  # the OpenAI burst, main and:
    # 5: .whl/base/src before it (and (a)); 7: each tree under .whl/var after it; 8: nothing, 4 rounds
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    rounds=$([ "$part" = 8 ] && echo 4 || echo 2)
    openai="benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds $rounds --processes 4"
    if [ "$part" = 5 ]; then step 110 env PYTHONPATH="$PWD/.whl/base/src" python3 $openai; fi
    step $((55 * rounds)) python3 $openai
    if [ "$part" = 5 ]; then step 80 python3 benchmarks/constraints_gpu.py --only a; fi
    if [ "$part" = 7 ]; then
        for variant in .whl/var/*/src; do  # source trees of changes not on main, one after another
            [ -d "$variant" ] || continue  # (none: the pattern stays as written)
            step 110 env PYTHONPATH="$PWD/$variant" python3 $openai
        done
    fi
elif [ "$part" = 9 ]; then  # issue 31 (a), (b): whole runs, then a steady window; (a) on .whl/base/src
    step 110 python3 benchmarks/constraints_gpu.py --only ab
    step 90 python3 benchmarks/constraints_gpu.py --only ab --window 4
    step 80 env PYTHONPATH="$PWD/.whl/base/src" python3 benchmarks/constraints_gpu.py --only a --window 4
elif [ "$part" = 10 ]; then  # issue 29: the OpenAI burst served by 0 (the baseline), 4 and 2 front-ends
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    openai="benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds 3 --processes 4"
    step 120 python3 $openai
    step 120 python3 $openai --openai-processes 4
    step 120 python3 $openai --openai-processes 2
    step 120 python3 $openai --openai-processes 4 --requests-per-stream 4
elif [ "$part" = 11 ]; then  # issue 31 (b): OpenAI JSON-schema rows with the HTTP work in front-ends
    step 100 python3 benchmarks/constraints_gpu.py --only b --window 4
    step 100 python3 benchmarks/constraints_gpu.py --only b --window 4 --openai-processes 4
    step 100 env LMQL_MASK_THREADS=12 python3 benchmarks/constraints_gpu.py --only b --window 4 --openai-processes 4
    step 100 env LMQL_MASK_THREADS=4 python3 benchmarks/constraints_gpu.py --only b --window 4 --openai-processes 4
    step 100 python3 benchmarks/mask_costs.py --grammar --tokenizer /tmp/lmql-bench-gpt2-medium/tokenizer.json --threads 1,4,8,12
elif [ "$part" = 12 ]; then  # issue 31 (a): where the engine thread's time goes, free and constrained
    step 120 python3 benchmarks/constraints_gpu.py --only a --window 4 --sample-stacks "$out/stacks_a"
elif [ "$part" = 13 ]; then  # small host tensors through a pinned ring: CUDA tests, cost, (a) against before
    step 90 python3 -m pytest -q tests/test_pinned_ring.py
    step 120 env LMQL_TEST_CUDA=1 python3 -m pytest -q tests/test_mask_staging.py tests/test_template_steps.py \
        tests/test_constraints_engine.py -k "cuda or side_by_side or forced_tokens_ride"
    step 60 python3 benchmarks/to_device_cost.py
    step 80 python3 benchmarks/constraints_gpu.py --only a --window 4
    step 80 env PYTHONPATH="$PWD/.whl/var/noring/src" python3 benchmarks/constraints_gpu.py --only a --window 4
    step 150 python3 scripts/gpu_check.py
elif [ "$part" = 14 ]; then  # (a) windowed: the tree before the ring, this one, and af34be5, in turn
    window="benchmarks/constraints_gpu.py --only a --window 3"
    step 60 env PYTHONPATH="$PWD/.whl/var/noring/src" python3 $window
    step 60 python3 $window
    step 60 env PYTHONPATH="$PWD/.whl/var/af34be5/src" python3 $window
elif [ "$part" = 15 ]; then  # issue 32: decode buckets replaying their batch's cover
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    step 150 python3 -m pytest -q tests/test_hf_cover_graphs.py tests/test_hf_capture_plan.py
    step 220 python3 benchmarks/startup.py --models gpt2-medium,qwen3-0.6b,llama-1b --compile-bytecode \
        --capture_all False
    step 150 python3 benchmarks/workloads.py --workloads short --capture_all False --budget-s 140
elif [ "$part" = 16 ]; then  # the graph checks; first runs with every graph captured first; qwen3 with covers
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    step 220 python3 scripts/gpu_check.py
    step 150 python3 benchmarks/workloads.py --workloads short --budget-s 140
    step 150 python3 benchmarks/workloads.py --workloads qwen3,llama --capture_all False --budget-s 140
elif [ "$part" = 18 ]; then  # issue 32: Llama-shaped layers' decode steps of many rows in ~10 kernels
    before="$PWD/.whl/rows_before/plugins/hf/src"
    step 200 python3 scripts/gpu_check.py
    step 100 python3 benchmarks/step_profile.py --model llama-1b --batches 1,64 --steps 50 --kernels
    step 100 env PYTHONPATH="$before" python3 benchmarks/step_profile.py --model llama-1b --batches 64 --steps 50 \
        --kernels
    step 100 python3 benchmarks/step_profile.py --model qwen3-0.6b --batches 64 --steps 50
    step 100 env PYTHONPATH="$before" python3 benchmarks/step_profile.py --model qwen3-0.6b --batches 64 --steps 50
elif [ "$part" = 19 ]; then  # the same served: the plugin at 00ba65f, then this one, each on fresh servers
    step 150 env PYTHONPATH="$PWD/.whl/rows_before/plugins/hf/src" python3 benchmarks/workloads.py \
        --workloads llama,qwen3 --budget-s 140
    step 150 python3 benchmarks/workloads.py --workloads llama,qwen3 --budget-s 140
elif [ "$part" = 20 ]; then  # one capture at a time in a process, in CUDA's thread-local mode
    step 150 python3 -m pytest -q tests/test_hf_cover_graphs.py tests/test_hf_capture_plan.py
    step 220 python3 scripts/gpu_check.py
elif [ "$part" = 21 ]; then  # GPT-2's blocks' decode steps of many rows: steps, then served, against before
    before="$PWD/.whl/rows_before/plugins/hf/src"
    step 90 python3 benchmarks/step_profile.py --model gpt2-medium --batches 64 --steps 50 --kernels
    step 90 env PYTHONPATH="$before" python3 benchmarks/step_profile.py --model gpt2-medium --batches 64 --steps 50 \
        --kernels
    step 120 python3 benchmarks/workloads.py --workloads short --budget-s 110
    step 120 env PYTHONPATH="$before" python3 benchmarks/workloads.py --workloads short --budget-s 110
elif [ "$part" = 22 ]; then  # 20's checks, then 21's GPT-2 numbers, in one call
    before="$PWD/.whl/rows_before/plugins/hf/src"
    step 100 python3 -m pytest -q tests/test_hf_cover_graphs.py
    step 200 python3 scripts/gpu_check.py
    step 60 python3 benchmarks/step_profile.py --model gpt2-medium --batches 64 --steps 50 --kernels
    step 60 env PYTHONPATH="$before" python3 benchmarks/step_profile.py --model gpt2-medium --batches 64 --steps 50 \
        --kernels
    step 100 python3 benchmarks/workloads.py --workloads short --budget-s 95
    step 100 env PYTHONPATH="$before" python3 benchmarks/workloads.py --workloads short --budget-s 95
elif [ "$part" = 23 ]; then  # issue 32's offline workload and SCORE with the many-row layers
    step 170 python3 benchmarks/workloads.py --workloads offline,score --budget-s 160
elif [ "$part" = 24 ]; then  # issue 32's table on an H200, LMQL 0.7.3 beside: gpt2-medium's points
    step 560 python3 benchmarks/workloads.py --workloads short,score,staggered,long-prompts --lmql-wheels .whl \
        --out "$out/w24" --budget-s 540
elif [ "$part" = 25 ]; then  # the Llama, Qwen3 and offline points, then the start-up
    step 420 python3 benchmarks/workloads.py --workloads llama,qwen3,offline --lmql-wheels .whl \
        --out "$out/w25" --budget-s 400
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    step 170 python3 benchmarks/startup.py --models gpt2-medium,qwen3-0.6b,llama-1b --compile-bytecode
elif [ "$part" = 26 ]; then  # kernels launched as dependents (PDL): the graph checks, then steps without and with
    step 200 python3 scripts/gpu_check.py
    for model in gpt2-medium llama-1b qwen3-0.6b; do
        step 70 env LMQL_PDL=0 python3 benchmarks/step_profile.py --model $model --batches 1,64 --steps 50
        step 70 python3 benchmarks/step_profile.py --model $model --batches 1,64 --steps 50
    done
elif [ "$part" = 28 ]; then  # queries and new keys rotated by the decode attention kernel: checks, steps, served
    step 200 python3 scripts/gpu_check.py
    for model in llama-1b qwen3-0.6b; do
        step 70 python3 benchmarks/step_profile.py --model $model --batches 1,64 --steps 50
    done
    step 170 python3 benchmarks/workloads.py --workloads short,llama,qwen3 --budget-s 160
elif [ "$part" = 29 ]; then  # a greedy step's choice in one kernel: against torch; Qwen3's steps with
    # RoPE in the attention kernel and without (.whl/var/norope: this plugin with 3fa1687 undone)
    step 40 python3 scripts/best_of_check.py
    step 55 python3 benchmarks/step_profile.py --model qwen3-0.6b --batches 1,64 --steps 50
    step 55 env PYTHONPATH="$PWD/.whl/var/norope/plugins/hf/src" python3 benchmarks/step_profile.py \
        --model qwen3-0.6b --batches 1,64 --steps 50
elif [ "$part" = 30 ]; then  # gpu_check, then where the engine thread's time goes in (a) and (b) today
    step 200 python3 scripts/gpu_check.py
    step 300 python3 benchmarks/constraints_gpu.py --only ab --window 3 --sample-stacks "$out/stacks30"
elif [ "$part" = 31 ]; then  # host lists written into the pinned ring by numpy, results through reused
    # pinned buffers, bias entries in one index_put: the CUDA tests, gpu_check, then (a) and (b)
    # windowed on the tree before (.whl/var/before) and on this one, each on a fresh server
    step 60 python3 -m pytest -q tests/test_pinned_ring.py
    step 120 env LMQL_TEST_CUDA=1 python3 -m pytest -q tests/test_mask_staging.py tests/test_template_steps.py \
        tests/test_constraints_engine.py -k "cuda or side_by_side or forced_tokens_ride"
    step 200 python3 scripts/gpu_check.py
    step 110 env PYTHONPATH="$PWD/.whl/var/before/src" python3 benchmarks/constraints_gpu.py --only ab --window 3
    step 110 python3 benchmarks/constraints_gpu.py --only ab --window 3
    # the same with the interpreter's switch interval at 10 us (benchmarks/variants/switch10/sitecustomize.py)
    step 110 env PYTHONPATH="$PWD/benchmarks/variants/switch10" python3 benchmarks/constraints_gpu.py --only ab --window 3
elif [ "$part" = 32 ]; then  # gpu_check (in-process models no longer capture while idle: its last check
    # met their captures in calls 30-31); then branch masked31 (a greedy choice under a constraint's
    # mask in one kernel, benchmarks/variants/masked31): its check against torch, and (a)/(b)
    # windowed without it and with it
    masked=/tmp/lmql-masked31
    rm -rf "$masked" && mkdir -p "$masked/plugins" && cp -r src scripts tests "$masked/" && cp -r plugins/hf "$masked/plugins/"
    patch -s -p1 -d "$masked" < benchmarks/variants/masked31/masked31.patch || echo "masked31.patch did not apply"
    step 200 python3 scripts/gpu_check.py
    step 60 env PYTHONPATH="$masked/src:$masked/plugins/hf/src" python3 "$masked/scripts/best_of_check.py"
    step 110 python3 benchmarks/constraints_gpu.py --only ab --window 3
    step 110 env PYTHONPATH="$masked/src:$masked/plugins/hf/src" python3 benchmarks/constraints_gpu.py --only ab --window 3
elif [ "$part" = 33 ]; then  # call 31's one run at a 10 us switch interval, settled: 50 and 10 in turn, twice
    for round in 1 2; do
        step 110 python3 benchmarks/constraints_gpu.py --only ab --window 3
        step 110 env PYTHONPATH="$PWD/benchmarks/variants/switch10" python3 benchmarks/constraints_gpu.py --only ab --window 3
    done
elif [ "$part" = 34 ]; then  # a template's next hole in its last one's place and cache: the CUDA
    # template tests, then (a) windowed on main before it (.whl/var/main51) and on this tree, in turn
    step 150 env LMQL_TEST_CUDA=1 python3 -m pytest -q tests/test_template_steps.py tests/test_constraints_engine.py \
        -k "cuda or side_by_side or forced_tokens_ride or go_on"
    for round in 1 2; do
        step 100 env PYTHONPATH="$PWD/.whl/var/main51/src" python3 benchmarks/constraints_gpu.py --only a --window 3
        step 100 python3 benchmarks/constraints_gpu.py --only a --window 3
    done
elif [ "$part" = 36 ]; then  # 34's CUDA tests (next holes in their last ones' caches, on CUDA graphs), then 35
    step 150 env LMQL_TEST_CUDA=1 python3 -m pytest -q tests/test_template_steps.py tests/test_constraints_engine.py \
        -k "cuda or side_by_side or forced_tokens_ride or go_on"
    step 150 python3 benchmarks/constraints_gpu.py --only a --window 3 --sample-stacks "$out/stacks35"
elif [ "$part" = 37 ]; then  # 36 within ~220 s: the CUDA side-by-side template test alone, then (a)'s stacks
    step 100 env LMQL_TEST_CUDA=1 python3 -m pytest -q tests/test_template_steps.py -k "side_by_side and cuda"
    step 110 python3 benchmarks/constraints_gpu.py --only a --window 3 --sample-stacks "$out/stacks35"
elif [ "$part" = 35 ]; then  # where a constrained (a) step's engine thread goes now that next holes
    # go on in their last ones' caches: (a) windowed with its stacks sampled (stack_shares.py reads them)
    step 150 python3 benchmarks/constraints_gpu.py --only a --window 3 --sample-stacks "$out/stacks35"
elif [ "$part" = 27 ]; then  # issue 32's points in one call, no LMQL lane; then the start-up
    step 400 python3 benchmarks/workloads.py --workloads short,score,staggered,long-prompts,llama,qwen3,offline \
        --out "$out/w27" --budget-s 380
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    step 170 python3 benchmarks/startup.py --models gpt2-medium,qwen3-0.6b,llama-1b --compile-bytecode
elif [ "$part" = 3 ] || [ "$part" = 6 ]; then  # 6: 3's first and third steps (under 6 minutes)
    # bytecode compiled once (pip does it on a user's machine; this image forbids writing it)
    export PYTHONPYCACHEPREFIX=/tmp/lmql-pyc
    step 200 python3 benchmarks/startup.py --models gpt2-medium,qwen3-0.6b,llama-1b --compile-bytecode \
        --capture_all False
    if [ "$part" = 3 ]; then  # every graph before Ready, for comparison
        step 70 python3 benchmarks/startup.py --models gpt2-medium
    fi
    step 120 python3 benchmarks/workloads.py --workloads short --capture_all False --budget-s 110
    if [ "$part" = 3 ]; then
        step 120 python3 benchmarks/workloads.py --workloads short --capture_all False --capture_at_use 4 \
            --budget-s 110
    fi
else
    step 100 python3 benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds 2 --processes 4
    step 100 python3 benchmarks/openai_vs_lmtp.py --model gpt2-medium --streams 64 --rounds 2 --processes 4 \
        --openai-events-per-s 1000
    step 90 python3 benchmarks/mask_costs.py --grammar --tokenizer /tmp/lmql-bench-gpt2-medium/tokenizer.json \
        --threads 1,8
    step 220 python3 scripts/gpu_check.py
fi
