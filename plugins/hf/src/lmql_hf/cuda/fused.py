"""Single-kernel stand-ins for modules that run as chains of small kernels (used on CUDA).

A decode step of a few sequences is bound by kernel launches, not arithmetic: GPT-2's
``gelu_new`` runs as seven elementwise kernels per layer and Llama's RMSNorm as eight. The
stand-ins compute the same functions in one or a few kernels; results differ by rounding only.
At one row (a single stream's decode step) every linear layer is a matrix-vector product that
cuBLAS runs well under memory bandwidth: those run as a Triton kernel (gemv_kernel) that also
adds the bias and, in GPT-2's MLP, the GELU. The decoder layers of Llama, Qwen2, Qwen3 and GPT-2
run one token in a few fused kernels (one_row_layers). Only exact classes are swapped: look-alikes
(Gemma's RMSNorm scales by 1 + weight, quantized linear layers) stay as they are.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers import __version__ as transformers_version
from transformers.pytorch_utils import Conv1D

from lmql_hf.cuda import one_row_layers
from lmql_hf.kernels import runs_on

SILU = {"SiLUActivation", "SiLU"}
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


def _row_kernel() -> ModuleType | None:
    """The one-row Triton kernel, where Triton is installed (it comes with CUDA builds of torch)."""
    try:
        from lmql_hf.kernels import gemv_kernel
    except ImportError:
        return None
    return gemv_kernel


def _rows_kernel() -> ModuleType | None:
    """The many-row kernels (norm, SiLU * up), where Triton is installed."""
    try:
        from lmql_hf.kernels import rows_kernel
    except ImportError:
        return None
    return rows_kernel


def runs_kernel(x: torch.Tensor) -> bool:
    return runs_on(x.device)


class OneRowLinear(nn.Module):
    """``act(x @ weight.T + bias)``, through the Triton kernel when x is a single row on the GPU
    (or in Triton's interpreter), through cuBLAS otherwise. ``weight`` is (out, in), contiguous."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 activation: str | None = None) -> None:
        super().__init__()
        self.weight, self.bias, self.activation = weight, bias, activation
        self.kernel = _row_kernel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.kernel and rows.shape[0] == 1 and runs_kernel(rows):
            out = self.kernel.row_times_weights(rows.contiguous(), self.weight, self.bias, self.activation)
        else:
            weight = self.weight.t()
            out = rows @ weight if self.bias is None else torch.addmm(self.bias, rows, weight)
            if self.activation:
                out = functional.gelu(out, approximate="tanh")
        return out.view(*x.shape[:-1], out.shape[-1])


def _one_row_linear(module: nn.Module, activation: str | None = None) -> OneRowLinear | None:
    if hasattr(module, "_hf_hook"):  # offloaded by accelerate: its weights are not ours to move
        return None
    if type(module) is nn.Linear:
        return OneRowLinear(module.weight, module.bias, activation)
    if type(module) is Conv1D:  # GPT-2's layout is (in, out): keep a transposed copy instead
        weight = nn.Parameter(module.weight.t().contiguous(), requires_grad=False)
        return OneRowLinear(weight, module.bias, activation)
    return None


def _fuse_gelu_into_mlp(mlp: nn.Module) -> bool:
    """GPT-2's MLP: the tanh-GELU runs inside c_fc's kernel."""
    c_fc, act = getattr(mlp, "c_fc", None), getattr(mlp, "act", None)
    if type(mlp).__name__ != "GPT2MLP" or type(act).__name__ != "NewGELUActivation":
        return False
    if not isinstance(c_fc, nn.Module) or (c_fc := _one_row_linear(c_fc, "gelu_tanh")) is None:
        return False
    mlp.c_fc, mlp.act = c_fc, nn.Identity()
    return True


def _all_linear(modules: list[Any]) -> bool:
    return all(type(m) is nn.Linear and not hasattr(m, "_hf_hook") for m in modules)


def _same_biases(linears: list[Any]) -> bool:
    """All with a bias or all without: their concatenation has one or none."""
    return len({m.bias is None for m in linears}) == 1


def _head_norms_fit(attention: nn.Module, norm_class: str) -> bool:
    """No per-head norms of q and k, or both (Qwen3's) of the layer's RMSNorm class, over
    head_dim, with one epsilon."""
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    if q_norm is None and k_norm is None:
        return True
    if q_norm is None or k_norm is None or not all(type(n).__name__ == norm_class for n in (q_norm, k_norm)):
        return False
    same_eps = float(q_norm.variance_epsilon) == float(k_norm.variance_epsilon)
    return same_eps and q_norm.weight.numel() == attention.head_dim == k_norm.weight.numel()


def _one_row_llama_layer(layer: nn.Module, kernel: ModuleType) -> nn.Module | None:
    """Llama's layer or one built like it (LLAMA_SHAPED), where every part is the class expected."""
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attention is None or mlp is None or type(getattr(mlp, "act_fn", None)).__name__ not in SILU:
        return None
    norm_class = LLAMA_SHAPED[type(layer).__name__]
    norms = [getattr(layer, name, None) for name in ("input_layernorm", "post_attention_layernorm")]
    qkv = [getattr(attention, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    gate_up = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj")]
    outs = [getattr(attention, "o_proj", None), getattr(mlp, "down_proj", None)]
    if not all(type(n).__name__ == norm_class for n in norms) or not _all_linear(qkv + gate_up + outs):
        return None
    if not hasattr(attention, "scaling") or not isinstance(getattr(attention, "head_dim", None), int):
        return None
    if not (_same_biases(qkv) and _same_biases(gate_up) and _head_norms_fit(attention, norm_class)):
        return None
    return one_row_layers.OneRowLlamaLayer(layer, kernel, runs_kernel, _rows_kernel())


def _one_row_gpt2_block(block: nn.Module, kernel: ModuleType) -> nn.Module | None:
    attention, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if attention is None or mlp is None or hasattr(block, "crossattention"):
        return None
    if not hasattr(attention, "scaling"):
        return None
    if type(mlp.c_fc) is not OneRowLinear or mlp.c_fc.activation != "gelu_tanh":  # GELU fused (above)
        return None
    if not all(type(n) is nn.LayerNorm and n.bias is not None for n in (block.ln_1, block.ln_2)):
        return None
    for parent, name in ((attention, "c_attn"), (attention, "c_proj"), (mlp, "c_proj")):
        child = getattr(parent, name)
        if type(child) is not OneRowLinear and (child := _one_row_linear(child)) is None:
            return None
        setattr(parent, name, child)
    return one_row_layers.OneRowGPT2Block(block, kernel, runs_kernel, _rows_kernel())


# decoder layers built like Llama's, by exact class: the class of RMSNorm each must have. Qwen2 adds
# biases to q, k and v; Qwen3 normalises q and k per head before RoPE (and passes its sliding
# window on to the attention, as Qwen2 does). Mistral and Phi-3 are left out: Mistral's attention
# reads its window from the config, Phi-3 fuses its projections differently.
LLAMA_SHAPED = {"LlamaDecoderLayer": "LlamaRMSNorm", "Qwen2DecoderLayer": "Qwen2RMSNorm",
                "Qwen3DecoderLayer": "Qwen3RMSNorm"}
ONE_ROW_LAYERS = {**dict.fromkeys(LLAMA_SHAPED, _one_row_llama_layer), "GPT2Block": _one_row_gpt2_block}


def _fuse_layers(model: nn.Module) -> int:
    """Decoder layers with a one-token path of a few kernels (transformers 5's layer signatures)."""
    kernel = _row_kernel()
    if kernel is None or int(transformers_version.split(".")[0]) < 5:
        return 0
    swaps = [(parent, name, new) for parent in model.modules() for name, child in parent.named_children()
             if (build := ONE_ROW_LAYERS.get(type(child).__name__)) and (new := build(child, kernel))]
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)


def stand_in(module: nn.Module) -> nn.Module | None:
    name = type(module).__name__
    if name == "NewGELUActivation":
        return TanhGELU()
    if (linear := _one_row_linear(module)) is not None:
        return linear
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if name in RMS_NORMS and isinstance(weight, nn.Parameter) and isinstance(eps, float):
        return FusedRMSNorm(weight, eps)
    return None


def fuse(model: nn.Module) -> int:
    """Swap every module that has a stand-in; returns how many were swapped."""
    fused_mlps = sum(_fuse_gelu_into_mlp(mlp) for mlp in list(model.modules()))
    fused_layers = _fuse_layers(model)
    swaps = [(parent, name, new) for parent in model.modules() for name, child in parent.named_children()
             if (new := stand_in(child)) is not None]
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return fused_mlps + fused_layers + len(swaps)
