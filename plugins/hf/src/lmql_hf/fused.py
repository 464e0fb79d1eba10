"""Single-kernel stand-ins for modules that run as chains of small kernels (used on CUDA).

A decode step of a few sequences is bound by kernel launches and memory reads, not arithmetic:
GPT-2's ``gelu_new`` runs as seven elementwise kernels per layer and Llama's RMSNorm as eight,
and GPT-2's ``Conv1D`` layers (weights stored input-major, bias fused into the product) read
their weights at well under half the rate a matrix-vector kernel reaches. The stand-ins compute
the same functions; results differ by rounding only. Only exact classes are swapped: look-alikes
(Gemma's RMSNorm scales by 1 + weight) stay as they are.
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


class Conv1DAsLinear(nn.Module):
    """GPT-2's ``Conv1D`` (x @ W + b, W stored in × out) with W stored out × in, as ``nn.Linear``.
    One row at a time, the product without the bias runs as cuBLAS's matrix-vector kernel: on an
    H100 at ~2.5 TB/s rather than the ~1.1 TB/s of the fused-bias product Conv1D gets."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() == 1:
            return functional.linear(x, self.weight) + self.bias
        return functional.linear(x, self.weight, self.bias)


def stand_in(module: nn.Module) -> nn.Module | None:
    name = type(module).__name__
    if name == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        return Conv1DAsLinear(module)
    if name == "NewGELUActivation":
        return TanhGELU()
    if name in RMS_NORMS and hasattr(module, "variance_epsilon"):
        return FusedRMSNorm(module.weight, float(module.variance_epsilon))
    return None


def fuse(model: nn.Module) -> int:
    """Swap every module that has a stand-in; returns how many were swapped."""
    swaps = [(parent, name, new) for parent in model.modules() for name, child in parent.named_children()
             if (new := stand_in(child)) is not None]
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)
