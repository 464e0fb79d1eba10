"""The engine's array operations on a backend whose kernels run (CUDA, or Triton's interpreter
in tests): ``TorchOps`` with a greedy step's choice in one Triton kernel (``kernels/best_kernel``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from lmql_core.plugin import TorchOps
from lmql_hf.kernels import runs_on


class KernelOps(TorchOps):
    def __init__(self, best_kernel: ModuleType) -> None:
        super().__init__()
        self.best_kernel = best_kernel

    def best_of(self, x: Any) -> tuple[Any, Any]:
        if runs_on(x.device) and x.dtype is torch.float32 and x.dim() == 2 and x.stride(1) == 1:
            return self.best_kernel.best_of(x)
        return super().best_of(x)


def ops_for(device: torch.device) -> TorchOps:
    """``KernelOps`` where its kernel runs on ``device``, else ``TorchOps``."""
    if not runs_on(device):
        return TorchOps()
    try:
        from lmql_hf.kernels import best_kernel
    except ImportError:
        return TorchOps()
    return KernelOps(best_kernel)
