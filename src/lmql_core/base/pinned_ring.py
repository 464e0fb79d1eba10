"""Pinned host memory that small host tensors (a step's row numbers, positions, bias entries) go
to a GPU through, reused in turn instead of pinning a fresh copy of each (``TorchOps.to_device``).
torch is passed in, never imported here.

Pinning a fresh tensor asks torch's caching host allocator for a block and records an event for
its copy; on a GPU host with the device busy that cost the engine thread 28% of its time in a
constrained window (issue 31 (a), ``benchmarks/RESULTS.md``). Here a tensor is written into the
current segment of one pinned buffer and copied from there without blocking; a segment is
written again only once the copies that read it have run: each segment records, as it is left,
an event on every stream that copied from it, and waits for those events when it comes round
again (``SEGMENTS`` of them: that wait is long over by then, as with ``MaskStaging``'s ring).
A host list is written there by numpy (``values_to_device``): one device copy is then the only
torch call that gives up the interpreter's lock, where a CPU tensor made first and copied in cost
two (on a GPU host with the event loop busy, each such call may wait for the lock: issue 31).

Results come back the other way through ``HostCopies``: pinned buffers reused once their values
were read, instead of a fresh pinned block for every array of every step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

SEGMENTS = 8
SEGMENT_BYTES = 1 << 18  # a tensor larger than this goes the allocator's way
ALIGN = 64  # bytes: every tensor starts on this boundary (its dtype's alignment at most)


class PinnedRing:
    """One thread's ring (``rings`` gives each thread its own)."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.buffer = torch.empty(SEGMENTS * SEGMENT_BYTES, dtype=torch.uint8, pin_memory=True)
        self.array = self.buffer.numpy()  # the same memory, for numpy's writes
        self.left: list[list[Any]] = [[] for _ in range(SEGMENTS)]  # each segment's events, as it was left
        self.streams: list[Any] = []  # the streams that copied from the current segment
        self.segment = 0
        self.offset = 0
        self.numpy_types = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32,
                            torch.uint8: np.uint8, torch.bool: np.bool_}

    def to_device(self, host: Any, device: Any) -> Any | None:
        """``host`` (a CPU tensor) on ``device`` (a GPU), copied without blocking; None for one
        too large for a segment."""
        size = host.numel() * host.element_size()
        start = self._reserve(size)
        if start is None:
            return None
        staged = self.buffer[start : start + size].view(host.dtype).view(host.shape)
        staged.copy_(host)
        return self._copy(staged, device)

    def values_to_device(self, values: Any, dtype: Any, device: Any) -> Any | None:
        """A host list (or array) as a tensor of ``dtype`` (None: as ``torch.tensor`` infers it)
        on ``device``, copied without blocking; None where this ring does not take it (a dtype
        it does not know, or too large): ``to_device`` of ``torch.tensor(values)`` then."""
        if dtype is None and isinstance(values, np.ndarray):
            return None  # (torch.tensor keeps an array's own dtype)
        try:
            host = np.asarray(values)
        except ValueError:  # ragged: torch.tensor tells what is wrong
            return None
        if dtype is None:  # torch.tensor's choices for lists: whole numbers int64, other numbers float32
            kind = host.dtype.kind
            dtype = (self.torch.int64 if kind in "iu" else self.torch.float32 if kind == "f"
                     else self.torch.bool if kind == "b" else None)
        wanted = self.numpy_types.get(dtype)
        if wanted is None or host.dtype.kind not in "iufb":
            return None
        size = host.size * np.dtype(wanted).itemsize
        start = self._reserve(size)
        if start is None:
            return None
        staged = self.array[start : start + size].view(wanted).reshape(host.shape)
        staged[...] = host
        return self._copy(self.torch.from_numpy(staged), device)

    def _reserve(self, size: int) -> int | None:
        """Where ``size`` bytes go in the buffer (the next segment's start where the current one
        is full), None where they exceed a segment."""
        if size > SEGMENT_BYTES:
            return None
        if self.offset + size > SEGMENT_BYTES:
            self._next_segment()
        start = self.segment * SEGMENT_BYTES + self.offset
        self.offset += -(-size // ALIGN) * ALIGN
        return start

    def _copy(self, staged: Any, device: Any) -> Any:
        stream = self.torch.cuda.current_stream(device)
        if stream not in self.streams:
            self.streams.append(stream)
        return staged.to(device, non_blocking=True)

    def _next_segment(self) -> None:
        events = []
        for stream in self.streams:
            event = self.torch.cuda.Event()
            event.record(stream)
            events.append(event)
        self.left[self.segment], self.streams = events, []
        self.segment, self.offset = (self.segment + 1) % SEGMENTS, 0
        for event in self.left[self.segment]:  # the copies that last read this segment have run
            event.synchronize()


class Rings(threading.local):
    """A ``PinnedRing`` per thread, made at its first use there."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.ring: PinnedRing | None = None

    def get(self) -> PinnedRing:
        if self.ring is None:
            self.ring = PinnedRing(self.torch)
        return self.ring


KEEP_BUFFERS = 4  # pinned result buffers kept for reuse, per shape and dtype
KEEP_BYTES = 16 << 20  # and in all (SCORE requests of every length would otherwise keep one each)


@dataclass
class PendingCopy:
    """Device arrays on their way to pinned ``hosts``; ``done`` passes once they are there (None:
    ``hosts`` are the CPU arrays themselves)."""

    hosts: list[Any] | None
    done: Any


class HostCopies:
    """Device-to-host copies into pinned buffers that are used again once read (``finish``), so
    that a step's results ask torch's caching host allocator for nothing."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.free: dict[tuple[Any, Any], list[Any]] = {}  # by shape and dtype (list.pop: one taker)
        self.kept_bytes = 0

    def start(self, arrays: tuple[Any, ...]) -> PendingCopy:
        if not arrays[0].is_cuda:
            return PendingCopy(list(arrays), None)
        hosts = []
        for array in arrays:
            free = self.free.get((array.shape, array.dtype))
            if free:
                host = free.pop()
                self.kept_bytes -= _bytes(host)
            else:
                host = self.torch.empty(array.shape, dtype=array.dtype, pin_memory=True)
            hosts.append(host.copy_(array, non_blocking=True))
        done = self.torch.cuda.Event()
        done.record()
        return PendingCopy(hosts, done)

    @staticmethod
    def wait(pending: PendingCopy) -> None:
        if pending.done is not None:
            pending.done.synchronize()

    def finish(self, pending: PendingCopy) -> list[list[Any]]:
        """The values, as lists; the buffers go back for reuse (a copy is finished once)."""
        self.wait(pending)
        hosts, pending.hosts = pending.hosts, None
        if hosts is None:
            raise RuntimeError("a host copy was finished twice")
        values = [host.tolist() for host in hosts]
        if pending.done is not None:
            for host in hosts:
                key, size = (host.shape, host.dtype), _bytes(host)
                if len(self.free.get(key, ())) < KEEP_BUFFERS and self.kept_bytes + size <= KEEP_BYTES:
                    self.free.setdefault(key, []).append(host)
                    self.kept_bytes += size
        return values


def _bytes(tensor: Any) -> int:
    return int(tensor.numel() * tensor.element_size())
