"""Decode steps replayed from CUDA graphs: one graph per (batch bucket, length bucket).

A decode step of b running sequences (slots 0..b-1, one new token each) runs the graph of the
smallest captured batch >= b whose key length covers every row's position (one length only, the
context, with ``--any_length_graphs``: see ``length_buckets``); padding rows write to the
scratch slot. Inputs are copied into the graph's static tensors, so a step costs one
small host-to-device copy, the replay, and whatever reads the logits. The tokens may also come
as a device tensor (what the previous step sampled), so a step can be queued before the host
knows them.

Not every bucket is captured before "Ready" (``CapturePlan``): the first requests' few are, and
each batch bucket at the longest length (a "cover": the attention kernel reads each row only up to
its own position, so it serves any shorter bucket of that batch at about a replay's cost). A
bucket first needed later replays its batch's cover until the engine idles long enough to capture
it (``idle_capture``, the likeliest first); one without a cover (its capture ran out of memory)
runs eagerly at its padded shape (the same kernels a replay runs) until its
``--capture_at_use``-th use, which captures it.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from lmql_core.plugin import TorchOps

_OPS = TorchOps()  # row numbers reach the GPU without waiting for the work queued there
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)


def length_buckets(max_len: int, any_length: bool = False) -> list[int]:
    """The key lengths decode steps are run at (and graphs captured for): powers of two from 64,
    and ``max_len``. With ``any_length`` (the slot-attention kernel, which reads each row only up
    to its own position whatever the length it is given) only ``max_len``: one graph a batch."""
    if any_length:
        return [max_len]
    buckets, n = [], 64
    while n < max_len:
        buckets.append(n)
        n *= 2
    return [*buckets, max_len]


# before "Ready": single streams up to this many positions
FIRST_LENGTH = 256


Key = TypeVar("Key", bound=Hashable)


class CapturePlan(Generic[Key]):
    """When each bucket's graph is captured: ``first`` before "Ready" (every bucket where
    ``everything``); while the engine idles, in ``order`` (``next_idle``); and one that a pass
    needs before that: a ``covered`` bucket (a captured graph can run its passes) never at use,
    any other at its ``capture_at_use``-th use, the uses before it run eagerly (``use``). A
    bucket whose capture failed (out of memory) is covered or eager from then on.

    A capture stalls every stream for 20-75 ms and an eager step costs ~10 ms more than a replay
    (the host launches every kernel): a covered bucket's passes cost neither."""

    def __init__(self, order: list[Key], first: list[Key], everything: bool = False,
                 capture_at_use: int = 2) -> None:
        if capture_at_use < 1:
            raise ValueError(f"capture_at_use counts uses from 1, not {capture_at_use}")
        self.order = order
        self.first = list(order) if everything else [k for k in order if k in set(first)]
        self.capture_at_use = capture_at_use
        self.captured: set[Key] = set()
        self.failed: set[Key] = set()
        self.uses: Counter[Key] = Counter()
        self.eager: set[Key] = set()  # buckets a pass ran eagerly at

    def use(self, key: Key, covered: bool = False) -> str:
        """What a pass of bucket ``key`` does now: "replay", "cover" (replay the covering graph),
        "eager" or "capture" (then replay)."""
        if key in self.captured:
            return "replay"
        if covered:
            return "cover"
        self.uses[key] += 1
        if key in self.failed or self.uses[key] < self.capture_at_use:
            self.eager.add(key)
            return "eager"
        return "capture"

    def use_eagerly(self, key: Key) -> None:
        """A pass of bucket ``key`` runs eagerly now whatever ``use`` would say (before Ready)."""
        self.uses[key] += 1
        self.eager.add(key)

    def ran_eagerly(self, key: Key) -> bool:
        """Whether a pass of bucket ``key`` ran eagerly (its kernels compiled and loaded at its
        shapes: its capture needs no warm-up run)."""
        return key in self.eager

    def next_idle(self) -> Key | None:
        return next((k for k in self.order if k not in self.captured and k not in self.failed), None)


def batch_buckets(max_batch: int) -> list[int]:
    return [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]


def decode_plan(batches: list[int], lengths: list[int], everything: bool = False,
                capture_at_use: int = 2) -> CapturePlan[tuple[int, int]]:
    """Before "Ready": one stream up to ``FIRST_LENGTH`` positions (a first request's), and every
    batch at the longest length (its cover)."""
    first = [(1, n) for n in lengths if n <= FIRST_LENGTH] or [(1, lengths[0])]
    first += [(b, lengths[-1]) for b in batches if (b, lengths[-1]) not in first]
    return CapturePlan(diagonal_order(batches, lengths), first, everything, capture_at_use)


def prompt_plan(buckets: list[int], capture_at_use: int = 2) -> CapturePlan[int]:
    """Every bucket before "Ready": a dozen at most, under a second, where an eager pass costs a
    request ~15 ms of host time and no bucket covers another cheaply (a pass's work grows with
    its bucket's tokens)."""
    return CapturePlan(buckets, buckets, True, capture_at_use)


def diagonal_order(batches: list[int], lengths: list[int]) -> list[tuple[int, int]]:
    """Every (batch, length), by batch x length (the positions a step may read), shorter first
    among equals: few streams at short lengths first, and each batch size and each length has a
    graph early on (both buckets grow about twofold a step)."""
    return sorted(((b, n) for b in batches for n in lengths), key=lambda k: (k[0] * k[1], k[1]))


_STREAMS: dict[torch.device, torch.cuda.Stream] = {}
_WARMED: set[tuple[int, torch.device]] = set()  # (thread, device): a warm-up ran on its side stream
# held by a capture and by a model's whole load (``no_captures``): a load makes device-wide calls
# (synchronize, empty_cache) that fail while any stream of the device is capturing
_CAPTURING = threading.RLock()


def no_captures() -> threading.RLock:
    """Held, no other thread of the process captures a CUDA graph (a model's load holds it)."""
    return _CAPTURING


def capture(graph: torch.cuda.CUDAGraph, run: Callable[[], torch.Tensor], device: torch.device,
            pool: Any, warm: bool = True) -> torch.Tensor:
    """``run`` captured into ``graph``, its memory from ``pool`` (None: a new pool); the tensor its
    replays write. With ``warm``, ``run`` runs once first, so that what a first run does lazily
    (Triton's compiles, cuBLAS's workspaces) is not captured: without it only where a pass of the
    same shapes has run. Both on one side stream (one per device, as the shared pool wants), and
    without ``torch.cuda.graph``'s synchronize and emptied caches around every capture (the caller
    empties them once before many captures). The garbage collector waits meanwhile: objects it
    frees can make CUDA calls that invalidate a capture. A thread's first capture on a device
    warms up regardless: cuBLAS keeps a workspace per thread's handle and stream, made at first
    use. (A warm-up with a step's inputs writes what the step's replay writes again: the same.)

    One capture at a time in the process (``_CAPTURING``: backends share the side stream), none
    while another model loads, and each in CUDA's thread-local mode: another thread's work on its
    own streams meanwhile (a second model of the same process serving while this one captures in
    its idle time) neither fails nor invalidates the capture."""
    with _CAPTURING:
        if device not in _STREAMS:
            _STREAMS[device] = torch.cuda.Stream(device)
        return _capture_on(_STREAMS[device], graph, run, device, pool, warm)


def _capture_on(stream: torch.cuda.Stream, graph: torch.cuda.CUDAGraph, run: Callable[[], torch.Tensor],
                device: torch.device, pool: Any, warm: bool) -> torch.Tensor:
    thread = (threading.get_ident(), device)
    warm = warm or thread not in _WARMED
    _WARMED.add(thread)
    stream.wait_stream(torch.cuda.current_stream(device))
    collecting = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.stream(stream):
            if warm:
                run()
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                out = run()
            except BaseException:
                with contextlib.suppress(RuntimeError):  # the capture's own error is the one to see
                    graph.capture_end()
                raise
            graph.capture_end()
    finally:
        if collecting:
            gc.enable()
    torch.cuda.current_stream(device).wait_stream(stream)
    return out


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

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, lengths: list[int],
                 max_batch: int, scratch_slot: int, capture_all: bool = False,
                 capture_at_use: int = 2) -> None:
        self.forward = forward
        self.device = device
        self.lengths = lengths  # length_buckets
        self.batches = batch_buckets(max_batch)
        self.scratch = scratch_slot
        self.graphs: dict[tuple[int, int], DecodeGraph] = {}  # made, captured or not
        self.plan = decode_plan(self.batches, self.lengths, capture_all, capture_at_use)
        self.pool: Any = None
        self.staging = Staging(self.batches[-1])

    def capture_first(self) -> None:
        """Capture the buckets the first requests need and each batch's cover (every bucket with
        ``capture_all``), and run one stream once at every other length: the attention kernel's
        variants differ by length (how many splits), and are compiled now rather than during a
        request."""
        for batch, length in self.plan.first:
            self._capture(self._bucket(batch, length))
        for length in self.lengths:
            if (1, length) not in self.plan.captured:
                graph = self._bucket(1, length)
                graph.inputs[2].fill_(self.scratch)
                self.plan.use_eagerly((1, length))
                self._step(graph)

    def capture_next(self) -> bool:
        """Capture one bucket not captured yet, the likeliest first; False when none is left."""
        key = self.plan.next_idle()
        if key is None:
            return False
        self._capture(self._bucket(*key))
        return True

    def run(self, tokens: list[int] | torch.Tensor, positions: list[int],
            slots: list[int] | None = None) -> torch.Tensor:
        """Rows are slots 0..len(positions)-1; returns float32 logits of shape (rows, vocab).
        ``slots``: the slot each row writes, where some rows are padding (see ``run_scattered``)."""
        rows = len(positions)
        batch = next(b for b in self.batches if b >= rows)
        length = next(n for n in self.lengths if n > max(positions))
        how = self.plan.use((batch, length), covered=(batch, self.lengths[-1]) in self.plan.captured)
        graph = self._bucket(batch, self.lengths[-1] if how == "cover" else length)
        if isinstance(tokens, torch.Tensor):  # sampled by the previous step, still on the device
            self.staging.copy(graph.inputs, None, positions, self.scratch)
            (graph.inputs[0] if rows == batch else graph.inputs[0, :rows]).copy_(tokens)
        else:
            self.staging.copy(graph.inputs, tokens, positions, self.scratch, slots)
        if how == "eager":  # at the graph's shapes, from its inputs: the kernels a replay runs
            logits = self._step(graph)
        else:
            if how == "capture" and not self._capture(graph):
                logits = self._step(graph)
            else:
                graph.graph.replay()
                assert graph.logits is not None
                logits = graph.logits
        return logits if rows == batch else logits[:rows]

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

    def _bucket(self, batch: int, length: int) -> DecodeGraph:
        graph = self.graphs.get((batch, length))
        if graph is None:
            graph = self.graphs[(batch, length)] = DecodeGraph(batch, length, self.device)
        return graph

    def _capture(self, graph: DecodeGraph) -> bool:
        """Whether ``graph`` was captured (False: out of memory; its bucket then runs eagerly).
        Its inputs keep the values they hold, a step's: the capture's passes only read them."""
        key = (graph.batch, graph.length)
        warm = not self.plan.ran_eagerly(key)
        if warm:
            graph.inputs[2].fill_(self.scratch)  # the warm-up run writes to the scratch slot
        try:
            graph.logits = capture(graph.graph, lambda: self._step(graph), self.device, self.pool, warm)
        except torch.cuda.OutOfMemoryError:
            self.plan.failed.add(key)
            graph.graph = torch.cuda.CUDAGraph()
            return False
        self.pool = graph.graph.pool()
        self.plan.captured.add(key)
        return True

    def _step(self, graph: DecodeGraph) -> torch.Tensor:
        ids, positions, slots = graph.inputs[0:1].T, graph.inputs[1:2].T, graph.inputs[2:3].T
        # float32 as sampling takes them: the cast is then part of the replay, not a launch of its own
        return self.forward(ids, positions, slots, graph.length)[:, -1].float()
