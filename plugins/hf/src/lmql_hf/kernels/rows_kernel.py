"""Triton kernels for a decode step of many rows (one token each) through a Llama-shaped layer or
GPT-2's, where transformers runs chains of small kernels: RMSNorm (eight: casts, square, mean,
rsqrt, scalings), SwiGLU's SiLU(gate) * up (two), a residual add and the LayerNorm after it (two).
One kernel each here, a program per row (norms) or per block of a row (SiLU * up), rounding where
transformers' modules round: RMSNorm normalised in float32, cast to the input's dtype, then scaled
by the weight; SiLU rounded before the product; the residual sum rounded before it is normalised.
The matrix products around them stay cuBLAS's (at many rows they are no longer matrix-vector
products). Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmql_hf.kernels.dependent_launch import launch_options, wait_for_inputs

SILU_BLOCK = 1024


@triton.jit
def _rms_normed(x_ptr, g_ptr, y_ptr, K, stride_x, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)  # masked lanes are zeros: they add nothing
    out_ty = y_ptr.dtype.element_ty
    normed = (x * scale).to(out_ty).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * K + offs, (g * normed).to(out_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of each row of ``x`` (rows, K) as transformers' LlamaRMSNorm computes it, for a
    ``weight`` of x's dtype."""
    rows, k = x.shape
    assert x.stride(1) == 1 and weight.is_contiguous() and weight.numel() == k and weight.dtype == x.dtype
    y = torch.empty((rows, k), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(k)
    _rms_normed[(rows,)](x, weight, y, k, x.stride(0), eps, BLOCK=block, num_warps=8 if block >= 4096 else 4,
                         **launch_options(x.device))
    return y


@triton.jit
def _silu_times(gu_ptr, y_ptr, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    row, part = tl.program_id(0), tl.program_id(1)
    offs = part * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gate = tl.load(gu_ptr + row * 2 * N + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * 2 * N + N + offs, mask=mask, other=0.0).to(tl.float32)
    out_ty = y_ptr.dtype.element_ty
    activated = (gate * tl.sigmoid(gate)).to(out_ty).to(tl.float32)
    tl.store(y_ptr + row * N + offs, (activated * up).to(out_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for each row of ``gate_up`` (rows, 2N): gate in the first N columns, up in
    the last N (one product over gate's and up's weights, concatenated). Returns (rows, N)."""
    rows, width = gate_up.shape
    assert gate_up.is_contiguous() and width % 2 == 0
    n = width // 2
    y = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    _silu_times[(rows, triton.cdiv(n, SILU_BLOCK))](gate_up, y, n, BLOCK=SILU_BLOCK, num_warps=4,
                                                   **launch_options(gate_up.device))
    return y


@triton.jit
def _added_layer_normed(x_ptr, r_ptr, s_ptr, g_ptr, b_ptr, y_ptr, K, eps, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    out_ty = y_ptr.dtype.element_ty
    total = (tl.load(x_ptr + row * K + offs, mask=mask, other=0.0).to(tl.float32)
             + tl.load(r_ptr + row * K + offs, mask=mask, other=0.0).to(tl.float32)).to(out_ty)
    tl.store(s_ptr + row * K + offs, total, mask=mask)
    x = total.to(tl.float32)
    mean = tl.sum(x, axis=0) / K
    centred = tl.where(mask, x - mean, 0.0)
    scale = tl.rsqrt(tl.sum(centred * centred, axis=0) / K + eps)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * K + offs, (centred * scale * g + b).to(out_ty), mask=mask)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + residual, LayerNorm(x + residual)) for rows (rows, K), the sum rounded to x's dtype
    before it is normalised, as a residual add followed by ``nn.LayerNorm`` computes them."""
    rows, k = x.shape
    assert x.is_contiguous() and residual.is_contiguous() and residual.shape == x.shape
    assert weight.numel() == k == bias.numel()
    total, normed = torch.empty_like(x), torch.empty_like(x)
    block = triton.next_power_of_2(k)
    _added_layer_normed[(rows,)](x, residual, total, weight, bias, normed, k, eps, BLOCK=block,
                                 num_warps=8 if block >= 4096 else 4, **launch_options(x.device))
    return total, normed
