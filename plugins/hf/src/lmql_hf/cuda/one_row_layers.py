"""Decoder layers of Llama (and Qwen2, Qwen3) and GPT-2 that run a single token (a decode step of
one stream) in a few fused kernels, and anything else as transformers does.

A decode step of one row is bound by kernel launches: HF's Llama layer runs ~30 (RMSNorm, three
projections, RoPE's slices and concatenations, SiLU, mul, residual adds), Qwen3's ~40 (its
per-head RMSNorms of q and k besides) and GPT-2's ~10 besides attention. The stand-ins run the
norm inside the next product, q, k and v as one product over their concatenated weights (the
projections keep views of it: no copy), RoPE as one kernel (with Qwen3's q_norm and k_norm inside
it), gate and up as one product with SiLU * up, and the residual adds inside the output products
(gemv_kernel): five kernels a layer for Llama, Qwen2 and Qwen3 and four for GPT-2, around the
cache update and attention, which stay the model's own (the attention function the model is
configured with). A Llama-shaped layer runs a decode step of many rows (one token each) the same
way, with cuBLAS's products and a kernel each for the norms and SiLU * up (rows_kernel): ~10
kernels a layer against ~30; GPT-2's block ~9 against ~13.
Results differ from the original layers by rounding only. Anything else (prompt passes) goes to
the original layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from lmql_hf.cache import packed
from lmql_hf.cache.slot_cache import SlotCache

RunsKernel = Callable[[torch.Tensor], bool]
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")  # by transformers release


class OneRowLayer(nn.Module):
    """A decoder layer with a fused path for one token of one row (and of many: ``takes_rows``)."""

    ATTENTION = "self_attn"  # the layer's attention module
    norms: list[Any]  # the layer's two norms (``RowNorm``), the input's first

    def __init__(self, layer: Any, kernel: ModuleType, run_kernel: RunsKernel,
                 rows_kernel: ModuleType | None = None) -> None:
        super().__init__()
        self.layer: Any = layer
        self.kernel, self.runs_kernel, self.rows_kernel = kernel, run_kernel, rows_kernel
        self.signature = inspect.signature(layer.forward)

    def __getattr__(self, name: str) -> Any:
        """The layer's own attributes (``mlp``, ``attention_type``...), as models read them."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        one_token = hidden_states.shape[:-1].numel() == 1 or (
            hidden_states.dim() == 3 and hidden_states.shape[1] == 1 and self.takes_rows(hidden_states))
        if not one_token or not self.runs_kernel(hidden_states):
            return self.layer(hidden_states, *args, **kwargs)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        bound = self.signature.bind(hidden_states, *args, **kwargs).arguments
        implementation = getattr(self.layer, self.ATTENTION).config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get(implementation)
        if attention is None or bound.get("encoder_hidden_states") is not None:  # eager, cross-attention
            return self.layer(hidden_states, *args, **kwargs)
        # what the layer hands its attention module besides the mask: passed on to the attention
        extra = dict(bound.pop("kwargs", {}))
        extra.update({name: bound[name] for name in ("position_ids", "use_cache") if name in bound})
        cache = next((bound[name] for name in CACHE_ARGUMENTS if name in bound), None)
        run = self.many_rows if hidden_states.shape[0] > 1 else self.one_row
        return run(hidden_states, attention, cache, bound, extra)

    def takes_rows(self, x: torch.Tensor) -> bool:
        """Whether ``many_rows`` runs a decode step of many rows, (rows, 1, hidden), like ``x``."""
        return self.rows_kernel is not None and x.dtype == self.norms[0].weight.dtype

    def many_rows(self, x: torch.Tensor, attend: Callable[..., Any], cache: Any, arguments: dict[str, Any],
                  extra: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def one_row(self, x: torch.Tensor, attend: Callable[..., Any], cache: Any, arguments: dict[str, Any],
                extra: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


def _attended(attend: Callable[..., Any], module: Any, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, cache: Any, arguments: dict[str, Any],
              extra: dict[str, Any]) -> torch.Tensor:
    """Cache update and attention as the model's attention module runs them: (rows, heads x dim).
    In a decode pass through the slot kernel, the kernel writes the new keys and values itself."""
    if cache is not None:
        in_attention = (cache.update_in_attention(key, value, module.layer_idx)
                        if isinstance(cache, SlotCache) and packed.attention_writes(attend) else None)
        key, value = in_attention or cache.update(key, value, module.layer_idx, kwargs=extra)
    # Qwen2's and Qwen3's attention hand on their window (None where the layer sees everything)
    window = {"sliding_window": module.sliding_window} if hasattr(module, "sliding_window") else {}
    out, _ = attend(module, query, key, value, arguments.get("attention_mask"), dropout=0.0,
                    scaling=module.scaling, **window, **extra)
    return out.reshape(query.shape[0], -1).contiguous()


def _heads(flat: torch.Tensor, dim: int) -> torch.Tensor:
    """(rows, heads x dim) -> (rows, heads, 1, dim), as the attention functions take them."""
    return flat.view(flat.shape[0], 1, -1, dim).transpose(1, 2)


def _plus(residual: torch.Tensor, x: torch.Tensor, linear: Any) -> torch.Tensor:
    """residual + linear(x) in one product (cuBLAS adds the residual as it writes)."""
    if linear.bias is None:
        return torch.addmm(residual, x, linear.weight.t())
    return residual + functional.linear(x, linear.weight, linear.bias)


def _as_parameter(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def _concatenated(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of outs, in) weight (and bias) for ``linears``, which keep views of it."""
    weight = torch.cat([m.weight for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = _as_parameter(weight[start : start + rows])
        if bias is not None:
            m.bias = _as_parameter(bias[start : start + rows])
        start += rows
    return weight, bias


class OneRowLlamaLayer(OneRowLayer):
    """Llama's layer, and those built like it: Qwen2 (biases on q, k and v), Qwen3 (q and k
    RMS-normalised per head before RoPE). A decode step of many rows runs the same way with
    cuBLAS's products (``rows_kernel``): ~10 kernels a layer where transformers' layer runs ~30."""

    def __init__(self, layer: Any, kernel: ModuleType, run_kernel: RunsKernel,
                 rows_kernel: ModuleType | None = None) -> None:
        super().__init__(layer, kernel, run_kernel, rows_kernel)
        attention, mlp = layer.self_attn, layer.mlp
        self.qkv, self.qkv_bias = _concatenated([attention.q_proj, attention.k_proj, attention.v_proj])
        self.gate_up, self.gate_up_bias = _concatenated([mlp.gate_proj, mlp.up_proj])
        self.heads = attention.q_proj.weight.shape[0] // attention.head_dim
        self.kv_heads = attention.k_proj.weight.shape[0] // attention.head_dim
        self.norms = [kernel.RowNorm("rms", n.weight, None, float(n.variance_epsilon))
                      for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        self.head_norms = None if q_norm is None or k_norm is None else kernel.HeadNorms(
            q_norm.weight, k_norm.weight, self.heads, float(q_norm.variance_epsilon))

    def one_row(self, x: torch.Tensor, attend: Callable[..., Any], cache: Any, arguments: dict[str, Any],
                extra: dict[str, Any]) -> torch.Tensor:
        layer, kernel = self.layer, self.kernel
        attention = layer.self_attn
        row = x.reshape(1, -1)
        qkv = kernel.row_times_weights(row, self.qkv, self.qkv_bias, norm=self.norms[0])
        attended = self._rotated_attention(qkv, attend, cache, arguments, extra)
        out, down = attention.o_proj, layer.mlp.down_proj
        row = kernel.row_times_weights(attended, out.weight, out.bias, residual=row)
        gate_up, bias = self.gate_up, self.gate_up_bias
        hidden = kernel.row_times_weights(row, gate_up, bias, "silu_mul", norm=self.norms[1])
        row = kernel.row_times_weights(hidden, down.weight, down.bias, residual=row)
        return row.view(x.shape)

    def _rotated_attention(self, qkv: torch.Tensor, attend: Callable[..., Any], cache: Any,
                           arguments: dict[str, Any], extra: dict[str, Any]) -> torch.Tensor:
        """Attention of the rows' q, k, v (side by side in ``qkv``), q and k rotated in one kernel
        (after Qwen3's head norms)."""
        attention = self.layer.self_attn
        dim, heads, kv_heads = attention.head_dim, self.heads, self.kv_heads
        cos, sin = arguments["position_embeddings"]
        rotated = self.kernel.rotate_heads(qkv, heads + kv_heads, cos, sin, self.head_norms)
        query, key = _heads(rotated[:, : heads * dim], dim), _heads(rotated[:, heads * dim :], dim)
        value = _heads(qkv[:, (heads + kv_heads) * dim :], dim)
        return _attended(attend, attention, query, key, value, cache, arguments, extra)

    def many_rows(self, x: torch.Tensor, attend: Callable[..., Any], cache: Any, arguments: dict[str, Any],
                  extra: dict[str, Any]) -> torch.Tensor:
        """A decode step of many rows, (rows, 1, hidden): norms, RoPE and SiLU * up as one kernel
        each, q, k, v (and gate, up) as one product, residuals added inside the products."""
        layer, rows_kernel = self.layer, self.rows_kernel
        assert rows_kernel is not None
        input_norm, post_norm = self.norms
        attention = layer.self_attn
        rows = x.reshape(x.shape[0], -1)
        qkv = functional.linear(rows_kernel.rms_norm(rows, input_norm.weight, input_norm.eps), self.qkv,
                                self.qkv_bias)
        attended = self._rotated_attention(qkv, attend, cache, arguments, extra)
        rows = _plus(rows, attended, attention.o_proj)
        gate_up = functional.linear(rows_kernel.rms_norm(rows, post_norm.weight, post_norm.eps), self.gate_up,
                                    self.gate_up_bias)
        rows = _plus(rows, rows_kernel.silu_mul(gate_up), layer.mlp.down_proj)
        return rows.view(x.shape)


class OneRowGPT2Block(OneRowLayer):
    """GPT-2's block. A decode step of many rows: the second residual add and LayerNorm one kernel,
    c_fc's product with its GELU one (cuBLAS's epilogue), ~9 kernels a block against ~13."""

    ATTENTION = "attn"

    def __init__(self, layer: Any, kernel: ModuleType, run_kernel: RunsKernel,
                 rows_kernel: ModuleType | None = None) -> None:
        super().__init__(layer, kernel, run_kernel, rows_kernel)
        self.norms = [kernel.RowNorm("layer", n.weight, n.bias, float(n.eps))
                      for n in (layer.ln_1, layer.ln_2)]

    def one_row(self, x: torch.Tensor, attend: Callable[..., Any], cache: Any, arguments: dict[str, Any],
                extra: dict[str, Any]) -> torch.Tensor:
        layer, kernel = self.layer, self.kernel
        attention, mlp = layer.attn, layer.mlp
        row = x.reshape(1, -1)
        qkv_in, out, mlp_in = attention.c_attn, attention.c_proj, mlp.c_fc
        qkv = kernel.row_times_weights(row, qkv_in.weight, qkv_in.bias, norm=self.norms[0])
        query, key, value = (_heads(part, attention.head_dim) for part in qkv.split(attention.split_size, 1))
        attended = _attended(attend, attention, query, key, value, cache, arguments, extra)
        row = kernel.row_times_weights(attended, out.weight, out.bias, residual=row)
        hidden = kernel.row_times_weights(row, mlp_in.weight, mlp_in.bias, "gelu_tanh", norm=self.norms[1])
        row = kernel.row_times_weights(hidden, mlp.c_proj.weight, mlp.c_proj.bias, residual=row)
        return row.view(x.shape)

    def many_rows(self, x: torch.Tensor, attend: Callable[..., Any], cache: Any, arguments: dict[str, Any],
                  extra: dict[str, Any]) -> torch.Tensor:
        rows_kernel = self.rows_kernel
        assert rows_kernel is not None
        attention, mlp = self.layer.attn, self.layer.mlp
        (first, second), rows = self.norms, x.reshape(x.shape[0], -1)
        normed = functional.layer_norm(rows, (rows.shape[1],), first.weight, first.bias, first.eps)
        qkv = functional.linear(normed, attention.c_attn.weight, attention.c_attn.bias)
        query, key, value = (_heads(part, attention.head_dim) for part in qkv.split(attention.split_size, 1))
        attended = _attended(attend, attention, query, key, value, cache, arguments, extra)
        projected = functional.linear(attended, attention.c_proj.weight, attention.c_proj.bias)
        rows, normed = rows_kernel.add_layer_norm(projected, rows, second.weight, second.bias, second.eps)
        c_fc = mlp.c_fc
        if c_fc.bias is None:
            hidden = functional.gelu(functional.linear(normed, c_fc.weight), approximate="tanh")
        else:  # cuBLAS adds the bias and applies the tanh-GELU as it writes
            hidden = torch._addmm_activation(c_fc.bias, normed, c_fc.weight.t(), use_gelu=True)
        return _plus(rows, hidden, mlp.c_proj).view(x.shape)
