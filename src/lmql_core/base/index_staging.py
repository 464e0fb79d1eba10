"""The pinned host memory small host-to-GPU copies (index lists, a step's feeds) go through.

``tensor.pin_memory()`` for each of them asks torch's caching host allocator for a block every
time: it takes the allocator's lock and checks every block still in flight (an event query each),
so with the device a step or two behind the host, a dozen small copies a step cost the engine
thread a large share of a step (#31). Here they take turns through segments of one pinned arena
allocated once. torch is passed in, never imported here."""

from __future__ import annotations

import threading
from typing import Any


class IndexStaging:
    """``SEGMENTS`` segments of ``SEGMENT_BYTES``, taken in turn; each keeps an event recorded
    after its copy and is filled again only once that event has passed (with this many, long
    before the turn comes round: hundreds of copies later). Larger copies are pinned apart."""

    SEGMENTS = 512
    SEGMENT_BYTES = 4096

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.arena: Any = None
        self.copied: list[Any] = [None] * self.SEGMENTS
        self.turn = 0
        self.lock = threading.Lock()

    def to_device(self, host: Any, device: Any) -> Any:
        """``host`` (a CPU tensor) on ``device`` (a GPU), queued without waiting for it."""
        nbytes = host.numel() * host.element_size()
        if not 0 < nbytes <= self.SEGMENT_BYTES:
            return host.pin_memory().to(device, non_blocking=True)
        t = self.torch
        with self.lock:
            turn, self.turn = self.turn, (self.turn + 1) % self.SEGMENTS
            if self.arena is None:
                self.arena = t.empty(self.SEGMENTS * self.SEGMENT_BYTES, dtype=t.uint8, pin_memory=True)
            copied = self.copied[turn]
            if copied is not None:
                copied.synchronize()  # (that copy ran long ago: hundreds of copies since)
            start = turn * self.SEGMENT_BYTES
            staged = self.arena[start : start + nbytes].view(host.dtype).view(host.shape)
            staged.copy_(host)
            on_device = staged.to(device, non_blocking=True)
            copied = self.copied[turn] = copied or t.cuda.Event()
            copied.record(t.cuda.current_stream(device))
        return on_device
