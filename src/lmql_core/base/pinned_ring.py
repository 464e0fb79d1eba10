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
"""

from __future__ import annotations

import threading
from typing import Any

SEGMENTS = 8
SEGMENT_BYTES = 1 << 18  # a tensor larger than this goes the allocator's way
ALIGN = 64  # bytes: every tensor starts on this boundary (its dtype's alignment at most)


class PinnedRing:
    """One thread's ring (``rings`` gives each thread its own)."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.buffer = torch.empty(SEGMENTS * SEGMENT_BYTES, dtype=torch.uint8, pin_memory=True)
        self.left: list[list[Any]] = [[] for _ in range(SEGMENTS)]  # each segment's events, as it was left
        self.streams: list[Any] = []  # the streams that copied from the current segment
        self.segment = 0
        self.offset = 0

    def to_device(self, host: Any, device: Any) -> Any | None:
        """``host`` (a CPU tensor) on ``device`` (a GPU), copied without blocking; None for one
        too large for a segment."""
        size = host.numel() * host.element_size()
        if size > SEGMENT_BYTES:
            return None
        if self.offset + size > SEGMENT_BYTES:
            self._next_segment()
        start = self.segment * SEGMENT_BYTES + self.offset
        self.offset += -(-size // ALIGN) * ALIGN
        staged = self.buffer[start : start + size].view(host.dtype).view(host.shape)
        staged.copy_(host)
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
