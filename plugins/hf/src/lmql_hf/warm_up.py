"""The HF backend's warm-up before "Ready": a made-up serving workload, so no request waits for
kernels to load or compile or matrix algorithms to be chosen."""

from __future__ import annotations

import time
from typing import Any

import torch
from rich.console import Console

from lmql_core.plugin import SamplingParams, StepInput, collect_scoring, launch_scoring, sample_batch
from lmql_hf.cache import packed

console = Console(stderr=True)

GPU_ROWS = 64  # the most sequences a warm-up step runs on a GPU, where shapes pick kernels
CPU_ROWS = 4  # on the CPU only libraries load lazily: a few rows do, and keep start-up short
CPU_PASS_TOKENS = 64  # the largest packed pass of the CPU's warm-up


def run(backend: Any) -> float:
    """Packed passes of every size up to a step's (fresh and continued chunks, one and many
    logits), decode rows beside prompts, chained steps, the engine's sampling and scoring, slot
    moves, and on the CPU the lean output head's forms timed (cpu/head_product.py); seconds taken.
    The cache is left as it was found. On the CPU what costs is each library's first use (a
    lone first request paid ~10 ms more, 4-layer GPT-2): a smaller workload covers it, in
    0.05-0.2 s, plus the head's timing (0.6-0.8 s for that GPT-2's 50,257 x 256 head)."""
    began = time.perf_counter()
    on_gpu = backend.device.type == "cuda"
    largest = backend.prefill_tokens if on_gpu else CPU_PASS_TOKENS
    count = min(3, backend.table.capacity)
    with console.status("Warming up..."):
        size = 16
        while size <= min(largest, backend.max_context):
            n = size // count
            rows = [([0] * n, slot, 0, n - 1) for slot in range(count - 1)]
            rows.append(([0] * n, count - 1, min(n, backend.max_context - n), 0 if size <= 1024 else n - 1))
            backend.packed_logits(packed.pack(rows))
            size *= 2
        if backend.lean is not None:  # before the steps below, which then run the chosen forms
            backend.lean.tune(backend.max_batch)
        serve(backend, GPU_ROWS if on_gpu else CPU_ROWS)
        slot_moves(backend)
        if on_gpu:
            torch.cuda.synchronize(backend.device)
    backend.table.forget_prefixes()
    return time.perf_counter() - began


def sampling_kinds() -> tuple[SamplingParams, ...]:
    """What requests ask for: greedy with log-probs and a bias, and sampled. New objects for each
    warm-up: the sampler keeps the bias it builds on them, sized for one model's vocabulary."""
    return (SamplingParams(max_tokens=8, top_logprobs=1, logit_bias={0: -100.0}),
            SamplingParams(max_tokens=8, temperature=0.8, top_k=40, top_p=0.9, top_logprobs=5))


def serve(backend: Any, most_rows: int) -> None:
    """Sequences of negative ids (the engine's are positive) join while others decode, in batches
    of one and of up to ``most_rows`` (as many as the backend holds), chained and not; then one
    is scored."""
    if backend.max_context < 128:
        return
    for rows in sorted({1, min(backend.max_batch, most_rows)}):
        ids = [-1 - i for i in range(rows)]
        prompt = [1] * min(48, backend.max_context // 4)
        out = backend.forward([StepInput(ids[0], prompt)])
        for params in sampling_kinds():
            sample_batch(backend.ops, out.last_logits, [params], 0)
        out = backend.forward([StepInput(ids[0], [2])] + [StepInput(i, prompt) for i in ids[1:]])
        for params in sampling_kinds():
            samples = sample_batch(backend.ops, out.last_logits, [params] * rows, 0)
        out = backend.forward([StepInput(i, [3]) for i in ids])
        if backend.chains_steps:
            launched = backend.forward_sampled(ids, backend.ops.tensor(samples.tokens, backend.device))
            if launched is not None:
                backend.confirm(ids, samples.tokens)
        backend.release_all(ids)
    scored = StepInput(-1000, [1] * 40, all_logits=True, logits_from=30)
    logits = backend.forward([scored]).all_logits[scored.seq_id]
    targets = [[1] * (len(logits) - 1)] * 2  # two requests: scored together, as a step's are
    collect_scoring(backend.ops, launch_scoring(backend.ops, [logits[:-1], logits[1:]], targets))
    backend.release_all([scored.seq_id])


def slot_moves(backend: Any) -> None:
    """Both kinds of slot move through the cache kernels (a copy, a swap), compiled now: the warm-up's
    own requests move no slot."""
    cache, scratch = backend.cache, backend.table.scratch
    if cache.move_slots is not None:
        cache.copy_slot(scratch, scratch, 1)
        cache.flush()
        cache.swap_slots([(scratch, scratch)], 1)
