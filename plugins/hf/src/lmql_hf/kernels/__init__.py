"""The Triton kernels: the one-row product (``gemv_kernel``), the slot cache's writes and moves
(``cache_kernels``), attention over the slot cache (``slot_attention``, its tiles in ``tiles``).
Each kernel module imports triton at its top, so it is imported only where Triton is (CUDA builds
of torch; its interpreter in tests), inside a ``try``; this package and ``tiles`` need no Triton."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class NewKeys:
    """A decode step's own keys and values, (rows, kv_heads, 1, dim) each, which the attention
    kernel (``slot_attention.decode_attention``) writes into the slot cache itself: row i's at its
    position of slot ``slots[i, 0]``, the keys it reads starting at slot ``first_slot``. With
    ``rope`` (cos, sin, ``gemv_kernel.HeadNorms`` or None), neither they nor the queries are
    rotated yet: the kernel rotates them as ``gemv_kernel.rotate_heads`` would."""

    key: torch.Tensor
    value: torch.Tensor
    slots: torch.Tensor
    first_slot: int
    rope: tuple[torch.Tensor, torch.Tensor, Any] | None = None


def runs_on(device: torch.device) -> bool:
    """Triton runs on the GPU, or anywhere in its interpreter (the tests)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
