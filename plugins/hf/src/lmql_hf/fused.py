"""Single-kernel stand-ins for modules that run as chains of small kernels (used on CUDA).

A decode step of a few sequences is bound by kernel launches, not arithmetic: GPT-2's
``gelu_new`` runs as seven elementwise kernels per layer and Llama's RMSNorm as eight. The
stand-ins compute the same functions in one or a few kernels; results differ by rounding only.
Only exact classes are swapped: look-alikes (Gemma's RMSNorm scales by 1 + weight) stay as they are.
(GPT-2's Conv1D as a transposed linear layer was tried: cuBLAS picks the same kind of kernel for
it at one row, and the separate bias add made the step slower.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm"}


class TanhGELU(nn.Module):
    """``gelu_new``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.gelu(x, approximate="tanh")


class FusedRMSNorm(nn.Module):
    """Llama's RMSNorm (normalised in float32, scaled in the input's dtype)."""

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = weight, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = functional.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def stand_in(module: nn.Module) -> nn.Module | None:
    name = type(module).__name__
    if name == "NewGELUActivation":
        return TanhGELU()
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if name in RMS_NORMS and isinstance(weight, nn.Parameter) and isinstance(eps, float):
        return FusedRMSNorm(weight, eps)
    return None


def fuse(model: nn.Module) -> int:
    """Swap every module that has a stand-in; returns how many were swapped."""
    swaps = [(parent, name, new) for parent in model.modules() for name, child in parent.named_children()
             if (new := stand_in(child)) is not None]
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)
