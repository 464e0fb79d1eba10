"""Decode steps replayed from CUDA graphs: one graph per (batch bucket, length bucket).

A decode step of b running sequences (slots 0..b-1, one new token each) runs the graph of the
smallest captured batch >= b whose key length covers every row's position; padding rows write
to the scratch slot. Inputs are copied into the graph's static tensors, so a step costs one
small host-to-device copy, the replay, and whatever reads the logits. The tokens may also come
as a device tensor (what the previous step sampled), so a step can be queued before the host
knows them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lmql_core.plugin import TorchOps

_OPS = TorchOps()  # row numbers reach the GPU without waiting for the work queued there
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)


def length_buckets(max_len: int) -> list[int]:
    buckets, n = [], 64
    while n < max_len:
        buckets.append(n)
        n *= 2
    return [*buckets, max_len]


def capture(graph: torch.cuda.CUDAGraph, run: Callable[[], torch.Tensor], device: torch.device,
            pool: Any) -> torch.Tensor:
    """``run`` once on a side stream, so that what a first run does lazily (Triton's compiles,
    cuBLAS's workspaces) is not captured, then captured into ``graph``, its memory from ``pool``
    (None: a new pool); the tensor its replays write. One run does all of that: a second added
    half again to the captures' time, the largest part of start-up (72 graphs, 8-10 s)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream(device).wait_stream(stream)
    with torch.cuda.graph(graph, pool=pool):
        return run()


class DecodeGraph:
    def __init__(self, batch: int, length: int, device: torch.device) -> None:
        self.batch, self.length = batch, length
        self.inputs = torch.zeros((3, batch), dtype=torch.long, device=device)  # ids, positions, slots
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None


class Staging:
    """Pinned host buffers for the graphs' inputs (ids, positions, slots), filled in turn. A
    buffer is filled again only once the copy that read it has run (an event each), so a copy
    queued behind earlier steps never sees a later step's inputs; with a few buffers that wait is
    long over. Filling through numpy costs a fraction of building and pinning a tensor per step."""

    DEPTH = 4

    def __init__(self, width: int) -> None:
        self.buffers = [torch.empty(3 * width, dtype=torch.long, pin_memory=True) for _ in range(self.DEPTH)]
        self.copied = [torch.cuda.Event() for _ in range(self.DEPTH)]
        self.in_use = [False] * self.DEPTH
        self.slot_numbers = np.arange(width)
        self.turn = 0
        self._views: dict[tuple[int, int], tuple[torch.Tensor, np.ndarray]] = {}

    def copy(self, into: torch.Tensor, ids: list[int] | None, positions: list[int], scratch: int,
             slots: list[int] | None = None) -> None:
        """``into``: a graph's (3, batch) inputs; rows past ``len(positions)`` are padding. Row i
        writes slot i, or ``slots[i]`` where given (the scratch slot for a padding row)."""
        turn, self.turn = self.turn, (self.turn + 1) % self.DEPTH
        if self.in_use[turn]:
            self.copied[turn].synchronize()
        batch, rows = into.shape[1], len(positions)
        pinned, host = self._view(turn, batch)
        host[0, :rows] = ids if ids is not None else 0
        host[1, :rows] = positions
        host[2, :rows] = self.slot_numbers[:rows] if slots is None else slots
        host[:2, rows:] = 0
        host[2, rows:] = scratch
        into.copy_(pinned, non_blocking=True)
        self.copied[turn].record()
        self.in_use[turn] = True

    def _view(self, turn: int, batch: int) -> tuple[torch.Tensor, np.ndarray]:
        if (turn, batch) not in self._views:
            pinned = self.buffers[turn][: 3 * batch].view(3, batch)
            self._views[(turn, batch)] = pinned, pinned.numpy()
        return self._views[(turn, batch)]


class DecodeGraphs:
    """``forward(ids, positions, slots, length)`` runs the model on (batch, 1) inputs."""

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, max_len: int,
                 max_batch: int, scratch_slot: int) -> None:
        self.forward = forward
        self.device = device
        self.lengths = length_buckets(max_len)
        self.batches = [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]
        self.scratch = scratch_slot
        self.graphs: dict[tuple[int, int], DecodeGraph] = {}
        self.pool: Any = None
        self.staging = Staging(self.batches[-1])

    def capture_all(self) -> None:
        """Capture every bucket now, so no request waits for a capture later."""
        for batch in self.batches:
            for length in self.lengths:
                self._capture(batch, length)

    def run(self, tokens: list[int] | torch.Tensor, positions: list[int],
            slots: list[int] | None = None) -> torch.Tensor:
        """Rows are slots 0..len(positions)-1; returns float32 logits of shape (rows, vocab).
        ``slots``: the slot each row writes, where some rows are padding (see ``run_scattered``)."""
        rows = len(positions)
        batch = next(b for b in self.batches if b >= rows)
        length = next(n for n in self.lengths if n > max(positions))
        graph = self.graphs.get((batch, length)) or self._capture(batch, length)
        if isinstance(tokens, torch.Tensor):  # sampled by the previous step, still on the device
            self.staging.copy(graph.inputs, None, positions, self.scratch)
            (graph.inputs[0] if rows == batch else graph.inputs[0, :rows]).copy_(tokens)
        else:
            self.staging.copy(graph.inputs, tokens, positions, self.scratch, slots)
        graph.graph.replay()
        assert graph.logits is not None
        return graph.logits if rows == batch else graph.logits[:rows]

    def fits(self, slots: list[int], positions: list[int]) -> bool:
        return max(slots) < self.batches[-1] and max(positions) < self.lengths[-1]

    def run_scattered(self, tokens: list[int], positions: list[int], slots: list[int]) -> torch.Tensor:
        """One token for each of ``slots`` (any of 0..max batch-1; the other rows up to the
        highest are padding, as when prompt chunks share the step): float32 logits, in order."""
        width = max(slots) + 1
        ids, at, writes = [0] * width, [0] * width, [self.scratch] * width
        for token, position, slot in zip(tokens, positions, slots, strict=True):
            ids[slot], at[slot], writes[slot] = token, position, slot
        logits = self.run(ids, at, writes)
        if slots == list(range(width)):
            return logits
        return logits[_OPS.tensor(slots, self.device)]

    def _capture(self, batch: int, length: int) -> DecodeGraph:
        graph = DecodeGraph(batch, length, self.device)
        graph.inputs[2].fill_(self.scratch)  # warm-up writes go to the scratch slot
        graph.logits = capture(graph.graph, lambda: self._step(graph), self.device, self.pool)
        self.pool = graph.graph.pool()
        self.graphs[(batch, length)] = graph
        return graph

    def _step(self, graph: DecodeGraph) -> torch.Tensor:
        ids, positions, slots = graph.inputs[0:1].T, graph.inputs[1:2].T, graph.inputs[2:3].T
        # float32 as sampling takes them: the cast is then part of the replay, not a launch of its own
        return self.forward(ids, positions, slots, graph.length)[:, -1].float()
