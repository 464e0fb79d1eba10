"""The Triton kernels: the one-row product (``gemv_kernel``), the many-row norms (``rows_kernel``),
the slot cache's writes and moves (``cache_kernels``), attention over the slot cache
(``slot_attention``, its tiles in ``tiles``), a greedy step's choice (``best_kernel``), and how
they launch on Hopper (``dependent_launch``).
Each kernel module imports triton at its top, so it is imported only where Triton is (CUDA builds
of torch; its interpreter in tests), inside a ``try``; this package and ``tiles`` need no Triton."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def runs_on(device: torch.device) -> bool:
    """Triton runs on the GPU, or anywhere in its interpreter (the tests)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
