"""Issue 31 (b)/(c) on the CPU: what a step's llguidance grammars cost the server, through the
engine's own pieces (``GrammarCompiler``, ``MaskFiller``, ``Constraint.events_after``), without
a model. Run by ``python benchmarks/mask_costs.py --grammar`` (its tokenizer options apply).

``rows`` sequences follow ``constraint_loads.SCHEMA`` (the JSON schema of ``constraints_gpu.py``'s
point (b)) for ``steps`` steps. Each step: the masks of every running row (``fill``: the engine's
``MaskFiller.start`` + ``wait``), a token per row chosen the way a random-weight model's greedy
decode chooses under a mask (the allowed token with the highest of fixed random scores plus a
little noise a step: the text runs into long strings and numbers, as the GPU run's does), then
the grammars take the tokens and force what follows (``following``: ``take_tokens`` and
``events_after``, as ``collect.py`` runs them; CPU time in the runs one row at a time). The walk
depends only on the masks, so every run below writes the same texts.

Runs: llguidance's default tokenizer slices against ``constraints.MASK_SLICES``, the masks one row
at a time (µs a row, and the slowest row of a step; CPU time, which other processes' load leaves
alone; with it the bound for n threads, per step max(slowest row, all rows / n), and what rayon's
contiguous runs of rows would take: ``spread_ms``). Then, with MASK_SLICES, ``MaskFiller`` with
each thread count, the rows' grammars compiled once (every copy sharing one lexer and its lock,
as before lexer groups) and once per thread (``GrammarCompiler``'s lexer groups, the default):
wall ms a step and the process's CPU ms a step (all threads: what spreading costs).
``busy``: the same beside a Python thread that keeps the interpreter's lock busy at the server's
switch interval, as the event loop and the engine thread do in the server (each matcher call
of ours takes the lock back once; llguidance's batch call once a step).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from constraint_loads import SCHEMA


def walk(tok: Any, rows: int, steps: int, threads: int | None, lexers: int = 1) -> dict[str, Any]:
    """One run (``threads`` None: the masks one row at a time), the grammar compiled ``lexers``
    times; ms and µs per step."""
    from lmql_core.engine import constraints
    from lmql_core.engine.mask_filler import MaskFiller
    from lmql_core.engine.sequence import SamplingParams, Sequence, Status
    from lmql_core.engine.steps import EngineStats

    compiler = constraints.GrammarCompiler(tok, tok.vocab_size, tok.eos_token_id, lexer_groups=lexers)
    spec = constraints.GrammarSpec.of("json_schema", SCHEMA)
    seqs = [Sequence(i, [0], SamplingParams(max_tokens=steps, constraint=compiler.compile(spec)),
                     sink=lambda events: None, max_generated=steps) for i in range(rows)]
    for seq in seqs:
        seq.status = Status.RUNNING
    # one row at a time: the grammars take their tokens on this thread too, so CPU time counts all
    os.environ["LMQL_MASK_THREADS"] = str(threads or 1)
    clock = time.perf_counter if threads else time.thread_time
    filler, rng = MaskFiller(EngineStats()), np.random.default_rng(0)
    scores = rng.standard_normal(tok.vocab_size)
    fills, cpus, slowest, following = [], [], [], []
    row_costs_by_step: list[dict[int, float]] = []  # one row at a time: seq_id -> CPU seconds
    for _ in range(steps):
        running = [s for s in seqs if s.status is Status.RUNNING]
        if not running:
            break
        if threads:
            started, cpu = time.perf_counter(), time.process_time()
            bits = filler.wait(filler.start(running), running).bits  # type: ignore[arg-type, union-attr]
            fills.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
        else:
            bits, costs = one_by_one([s.params.constraint for s in running])
            fills.append(sum(costs))
            slowest.append(max(costs))
            row_costs_by_step.append({s.seq_id: c for s, c in zip(running, costs, strict=True)})
        tokens = greedy(bits, scores, rng, tok.vocab_size, tok.eos_token_id)
        started = clock()
        follow(filler, running, tokens, tok.eos_token_id)
        following.append(clock() - started)
    filler.close()
    os.environ.pop("LMQL_MASK_THREADS", None)
    result: dict[str, Any] = {"fill_ms": statistics.mean(fills) * 1e3, "steps": len(fills),
                              "following_us": statistics.mean(following) * 1e6}
    if cpus:
        result["cpu_ms"] = statistics.mean(cpus) * 1e3
    if slowest:
        result["slowest_us"] = statistics.mean(slowest) * 1e6
        result["row_costs"] = row_costs_by_step
    return result


def spread_ms(steps: list[dict[int, float]], threads: int) -> tuple[float, float]:
    """From each step's row costs (one row at a time), ms a step when ``threads`` threads fill
    them, averaged: the bound max(slowest row, all rows / threads), no way of spreading does
    better; contiguous runs of rows in order, as rayon's splitter makes them (~2 a thread), each
    idle thread taking the next."""
    bound, runs = [], []
    for costs in steps:
        ordered = list(costs.values())
        bound.append(max(max(ordered), sum(ordered) / threads))
        size = -(-len(ordered) // (2 * threads))
        runs.append(_list_schedule([sum(ordered[i:i + size]) for i in range(0, len(ordered), size)], threads))
    return statistics.mean(bound) * 1e3, statistics.mean(runs) * 1e3


def _list_schedule(durations: list[float], threads: int) -> float:
    """When the last of ``durations`` ends, each started by the first thread free."""
    free = [0.0] * threads
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def one_by_one(constraints: list[Any]) -> tuple[np.ndarray, list[float]]:
    """Each row's mask alone, on this thread: the masks and each row's CPU seconds (other
    processes on the machine do not count)."""
    words = constraints[0].mask_words
    bits, costs = np.zeros((len(constraints), words), dtype=np.int32), []
    for j, constraint in enumerate(constraints):
        started = time.thread_time()
        constraint.matcher.unsafe_compute_mask_ptr(bits[j].ctypes.data, words * 4)
        costs.append(time.thread_time() - started)
    return bits, costs


def greedy(bits: np.ndarray, scores: np.ndarray, rng: Any, vocab: int, eos: int) -> list[int]:
    allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
    noisy = scores + 0.5 * rng.standard_normal((len(bits), vocab))
    return [int(t) for t in np.argmax(np.where(allowed, noisy, -np.inf), axis=1)]


def follow(filler: Any, seqs: list[Any], tokens: list[int], eos: int) -> None:
    """What ``Collector._emit_samples`` does with a step's constrained rows."""
    from lmql_core.engine.sequence import Status

    taken = filler.take_tokens(seqs, tokens, [0.0] * len(seqs), eos)
    for seq, token in zip(seqs, tokens, strict=True):
        seq.generated.append(token)
        ends = token == eos or len(seq.generated) >= seq.max_generated
        if not ends:
            _, ends = seq.params.constraint.events_after(seq, token, 0.0, {}, taken.get(id(seq)))
        if ends:
            seq.status = Status.FINISHED


def report(tok: Any, rows: int, steps: int, thread_counts: list[int], busy: bool = False) -> None:
    from lmql_core.engine import constraints
    from lmql_core.engine.mask_filler import _cgroup_cpus, mask_threads

    ours = constraints.MASK_SLICES
    thread_counts = thread_counts or [mask_threads()]
    print(f"vocabulary: {tok.vocab_size} tokens; {rows} rows of constraint_loads.SCHEMA, {steps} steps; "
          f"{len(os.sched_getaffinity(0))} CPUs (cgroup quota: {_cgroup_cpus() or 'none'}; the engine's "
          f"mask threads: {mask_threads()}); load average {os.getloadavg()[0]:.1f}")
    print("| slices | masks filled | fill ms/step | CPU ms/step | slowest row µs/step | following µs/step "
          "| steps |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    one_row: dict[str, Any] = {}
    for name, slices in (("llguidance's default", None), ("MASK_SLICES", ours)):
        constraints.MASK_SLICES = slices  # type: ignore[assignment]  # (None: llguidance's own)
        one_row = walk(tok, rows, steps, None)
        print(f"| {name} | one row at a time | {one_row['fill_ms']:.2f} | {one_row['fill_ms']:.2f} "
              f"| {one_row['slowest_us']:,.0f} | {one_row['following_us']:,.0f} | {one_row['steps']} |",
              flush=True)
    for threads in thread_counts:
        bound, runs = spread_ms(one_row["row_costs"], threads)
        for how, ms in ((f"bound at {threads} threads", bound), ("simulated: contiguous runs (rayon)", runs)):
            print(f"| MASK_SLICES | {how} | {ms:.2f} | - | - | - | - |", flush=True)
        lexer_counts = sorted({1, threads})  # one lexer shared, and one a thread
        for lexers, busy_lock in [(n, b) for b in ([False, True] if busy else [False]) for n in lexer_counts]:
            with _lock_kept_busy(busy_lock):
                r = walk(tok, rows, steps, threads, lexers)
            shared = "one lexer" if lexers == 1 else "a lexer each"
            how = f"llguidance's executor, {threads} threads, {shared}"
            how += ", busy" if busy_lock else ""
            print(f"| MASK_SLICES | {how} | {r['fill_ms']:.2f} | {r['cpu_ms']:.2f} "
                  f"| - | {r['following_us']:,.0f} | {r['steps']} |", flush=True)


@contextlib.contextmanager
def _lock_kept_busy(on: bool) -> Iterator[None]:
    """A thread that runs Python nonstop meanwhile, at the server's switch interval."""
    if not on:
        yield
        return
    from lmql_core.serving.run import GIL_SWITCH_INTERVAL_S

    stop, interval = threading.Event(), sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
