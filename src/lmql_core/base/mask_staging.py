"""The host buffers constraint masks travel through on their way to a GPU, reused from one
constrained step to the next instead of pinning a fresh copy of every mask (``TorchOps.mask_rows``).
torch is passed in, never imported here."""

from __future__ import annotations

from typing import Any

import numpy as np


class MaskStaging:
    """A few host buffers, taken in turn, each grown to the largest mask it held and viewed in
    the shape asked; pinned where the device is a GPU. For one thread (a backend's step loop).

    A copy from pinned memory (``non_blocking``) runs when the device reaches it, maybe steps
    after the host filled the buffer; filling it again before then would hand that copy a later
    step's mask. So each buffer keeps an event recorded after its copy and is filled again only
    once that event has passed. A ring of them rather than one buffer and its event: with one,
    every step would wait for the previous step's copy, i.e. for all device work queued before it,
    and the host could no longer queue steps ahead of the device (the engine's launched-ahead
    steps); with ``DEPTH`` buffers that wait is long over when a buffer comes round again."""

    DEPTH = 4

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.buffers: list[Any] = [None] * self.DEPTH
        self.copied: list[Any] = [None] * self.DEPTH  # each buffer's event after its last copy
        self.turn = 0

    def to_device(self, bits: np.ndarray, device: Any) -> Any:
        """``bits`` (int32 words, one row each) as a uint8 tensor of their bytes on ``device``.
        Off a GPU the result is a view of a host buffer: use it before the next call."""
        data = np.ascontiguousarray(bits).view(np.uint8)
        on_gpu = self.torch.device(device).type == "cuda"
        turn, self.turn = self.turn, (self.turn + 1) % self.DEPTH
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()  # the copy that last read this buffer has run
        host = self._buffer(turn, data.size, pinned=on_gpu)[: data.size]
        host.numpy()[:] = data.reshape(-1)
        host = host.view(data.shape)
        if not on_gpu:
            return host
        on_device = host.to(device, non_blocking=True)
        self.copied[turn] = self.copied[turn] or self.torch.cuda.Event()
        self.copied[turn].record(self.torch.cuda.current_stream(device))
        return on_device

    def _buffer(self, turn: int, size: int, pinned: bool) -> Any:
        """Buffer ``turn``, replaced by one of the next power of two bytes when ``size`` outgrows it
        (its last copy has run: ``to_device`` waited for it)."""
        buffer = self.buffers[turn]
        if buffer is None or buffer.numel() < size or buffer.is_pinned() != pinned:
            capacity = 1 << max(size - 1, 1).bit_length()
            buffer = self.torch.empty(capacity, dtype=self.torch.uint8, pin_memory=pinned)
            self.buffers[turn] = buffer
        return buffer
