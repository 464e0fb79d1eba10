"""How many threads the host's matrix products use (torch's intra-op threads)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# On the CPU, a step of at least ALL_CORES_FROM_TOKENS tokens runs on every core when the model's
# matrices hold at least ALL_CORES_FROM_WEIGHTS weights: then its matrix products outweigh the
# event loop's share of the step (4-layer GPT-2, 16M weights, 2 cores, leaving a core to the loop
# -> both: 32 streams 1,190-1,500 -> 1,800-2,000 tok/s, 8 streams 620-780 -> 785-870). A smaller
# model's steps are mostly the interpreter's work per operation, and lose to the threads'
# wake-ups (lmql-tiny, 1.9M weights: 32 streams 5,700-6,100 -> 3,700-5,000 tok/s). Rounding: a
# row's sums already depend on how many rows share its step (MKL blocks by shape), and the
# thread count is one more such factor; a lone stream's steps (one row) keep their threads.
ALL_CORES_FROM_WEIGHTS = 4_000_000
ALL_CORES_FROM_TOKENS = 8


def weights_per_token(model: torch.nn.Module) -> int:
    """Multiply-adds a token costs, roughly: the model's matrices, less an input embedding that
    is only looked up (a tied one is the output head too)."""
    count = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    embeddings = model.get_input_embeddings().weight  # type: ignore[operator]
    if embeddings is not model.get_output_embeddings().weight:  # type: ignore[operator]
        count -= embeddings.numel()
    return count


class HostThreads:
    """On the CPU, leave one core to the event loop that streams the tokens: with every core
    busy in matrix products, each token waits for the loop's turn (measured: 2.2x the throughput
    of 8 streams on 2 cores); but a large model's steps of many tokens take every core (above).
    With every layer on GPUs, one thread: the host then runs only small operations, where waking
    a team of threads costs more than it saves, and on a host busy with other work waits for all
    of them to get a core. ``--cpu_threads N`` (``chosen``) or OMP_NUM_THREADS decide instead."""

    def __init__(self, chosen: int | None, on_gpus: bool, weights: int) -> None:
        self.by_size: tuple[int, int] | None = None  # (steps of few tokens, of many)
        threads = chosen
        if threads is None and "OMP_NUM_THREADS" not in os.environ:
            cores = os.cpu_count() or 2
            threads = 1 if on_gpus else max(1, cores - 1)
            if not on_gpus and threads < cores and weights >= ALL_CORES_FROM_WEIGHTS:
                self.by_size = (threads, cores)
        if threads:
            torch.set_num_threads(int(threads))

    def use_for(self, tokens: int) -> None:
        """Set the threads for a step of ``tokens`` tokens (a no-op where they were chosen)."""
        if self.by_size is None:
            return
        fewer, many = self.by_size
        wanted = many if tokens >= ALL_CORES_FROM_TOKENS else fewer
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    @contextmanager
    def cores(self, every: bool) -> Iterator[None]:
        """Every core, or all but the event loop's, for one part of a step (``lean_decode``: the
        output head's product on every core, a decode step's layers on the others), then the
        step's own count again; a no-op where the threads were chosen."""
        if self.by_size is None:
            yield
            return
        before, wanted = torch.get_num_threads(), self.by_size[1 if every else 0]
        if wanted == before:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(before)
