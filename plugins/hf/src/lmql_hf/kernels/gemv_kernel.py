"""Triton kernels for a decode step of one row: y = act(norm(x) @ w.T + b) + residual, and RoPE
(after a per-head RMSNorm where the model has one: Qwen3; of one row or many).

At one row a layer's matrix product is a matrix-vector product: all that matters is
reading the weights once at full memory bandwidth. On an H100 (3.35 TB/s) cuBLAS's one-row
products of gpt2-medium's layers (2-8 MB of weights each) read 0.5-1.2 TB/s; this kernel, 0.7-1.6,
and 2.8 on the LM head. Each program takes a couple of whole weight rows (contiguous, so every
load is wide and coalesced) and adds bias and activation in the same pass.

A step of one row is otherwise bound by the number of kernels (each costs a few microseconds
however small), so the kernel also takes the work around a product that would be kernels of
their own: the norm before it (every program normalises the row, which it reads anyway; for
RMSNorm the product is scaled by 1/rms at the end, so the weights' loads need not wait for the
row's sum; LayerNorm only where the row is one block), the residual added after it, and SwiGLU's gate and up
products at once (rows n and N + n of the weights) with SiLU(gate) * up. Everything is computed
in float32 and rounded once, where the modules round after each operation: results differ by
rounding only.
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lmql_hf.kernels.dependent_launch import launch_options, wait_for_inputs

ACTIVATIONS = {None: 0, "gelu_tanh": 1, "silu_mul": 2}
NORMS = {None: 0, "rms": 1, "layer": 2}


@dataclass(frozen=True)
class RowNorm:
    """The norm applied to x before the product: RMSNorm (``bias`` None) or LayerNorm."""

    kind: str  # "rms" or "layer"
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float


@triton.jit
def _layer_normed(x, k_mask, offs_k, g_ptr, gb_ptr, K, eps):
    """LayerNorm of x (float32, one whole row, zeros where masked)."""
    x = tl.where(k_mask, x - tl.sum(x, axis=0) / K, 0.0)
    x = x * tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
    x = x * tl.load(g_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    return x + tl.load(gb_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)


@triton.jit
def _row_times_weights(x_ptr, w_ptr, b_ptr, y_ptr, r_ptr, g_ptr, gb_ptr, N, K, stride_wn, eps,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, NORM: tl.constexpr,
                       HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    up = tl.zeros((BLOCK_N,), dtype=tl.float32)  # SwiGLU's second product (rows N + n)
    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)  # RMSNorm's sum of x^2
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]
        # the weights' loads first: in flight while x is read and normalised
        w_mask = n_mask[:, None] if EVEN_K else n_mask[:, None] & k_mask[None, :]
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        if ACTIVATION == 2:
            u = tl.load(w_ptrs + N * stride_wn, mask=w_mask, other=0.0)
        wait_for_inputs(PDL)  # the weights need no earlier kernel: their loads go out first
        if EVEN_K:
            x = tl.load(x_ptr + offs_k).to(tl.float32)
        else:
            x = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        if NORM == 1:  # RMSNorm: x * g here, the row's 1 / rms once all of it is summed
            squares += x * x
            x = x * tl.load(g_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        if NORM == 2:  # the caller makes the whole row one block
            x = _layer_normed(x, k_mask, offs_k, g_ptr, gb_ptr, K, eps)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        if ACTIVATION == 2:
            up += tl.sum(u.to(tl.float32) * x[None, :], axis=1)
    if NORM == 1:
        scale = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        acc *= scale
        up *= scale
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if ACTIVATION == 2:
            up += tl.load(b_ptr + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if ACTIVATION == 1:  # tanh-GELU: 0.5 x (1 + tanh(u)) = x * sigmoid(2u)
        inner = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * inner)
    if ACTIVATION == 2:  # SiLU(gate) * up
        acc = acc * tl.sigmoid(acc) * up
    if HAS_RESIDUAL:
        acc += tl.load(r_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


def block_sizes(n: int, k: int, whole_row: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps), from sweeps over the gpt2-medium shapes on an H100 and the
    Llama 1.2B ones on an H200 (benchmarks/gemv_bench.py): a couple of whole rows per program;
    long rows get one, more warps. ``whole_row``: the row in one block (a norm is fused)."""
    if whole_row:
        block_k = triton.next_power_of_2(k)
        if k > 1024 and n >= 8192:  # Llama 1.2B's gate/up (8192 pairs): 19.7 us, ~24 with 1-2 rows
            return 4, block_k, 4
        return (1, block_k, 4) if k >= 4096 else (2, block_k, 2)
    if k >= 4096:
        return 1, 2048, 4
    if k > 1024:  # Llama 1.2B's o_proj (K 2048): 4.4 us against 5.0 with (2, 1024, 2) on an H200
        return 2, min(triton.next_power_of_2(k), 2048), 4
    return 2, min(triton.next_power_of_2(k), 1024), 2


def row_times_weights(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      activation: str | None = None, config: tuple[int, int, int] | None = None, *,
                      norm: RowNorm | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(norm(x) @ weight.T + bias) + residual`` for one row ``x`` of shape (1, K) and
    ``weight`` of shape (N, K); for ``silu_mul`` weight is (2N, K), gate rows over up rows
    (bias likewise 2N), and the result is SiLU(gate) * up, shape (1, N)."""
    rows, k = weight.shape
    n = rows // 2 if activation == "silu_mul" else rows
    assert x.shape == (1, k) and x.is_contiguous() and weight.stride(1) == 1
    assert activation != "silu_mul" or rows == 2 * n
    block_n, block_k, warps = config or block_sizes(n, k, norm is not None)
    assert norm is None or norm.kind == "rms" or block_k >= k, "a fused LayerNorm needs the row in one block"
    assert residual is None or residual.numel() == n and residual.is_contiguous()
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _row_times_weights[(triton.cdiv(n, block_n),)](
        x, weight, weight if bias is None else bias, y, weight if residual is None else residual,
        weight if norm is None else norm.weight,
        weight if norm is None or norm.bias is None else norm.bias, n, k, weight.stride(0),
        0.0 if norm is None else norm.eps,
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0, HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS[activation], NORM=NORMS[None if norm is None else norm.kind],
        HAS_RESIDUAL=residual is not None, num_warps=warps, **launch_options(x.device))
    return y


@dataclass(frozen=True)
class HeadNorms:
    """RMSNorm of each head before RoPE (Qwen3's q_norm and k_norm, over head_dim): the first
    ``query_heads`` heads scaled by ``query``, the others by ``key``."""

    query: torch.Tensor
    key: torch.Tensor
    query_heads: int
    eps: float


@triton.jit
def _rotated(qk_ptr, cos_ptr, sin_ptr, out_ptr, gq_ptr, gk_ptr, query_heads, heads, eps, stride_qk,
             stride_angles, HALF: tl.constexpr, BLOCK: tl.constexpr, HEAD_NORM: tl.constexpr,
             PDL: tl.constexpr):
    """One head of one row of RoPE: out = x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1);
    with HEAD_NORM, x is the head RMS-normalised and scaled by its norm's weight first."""
    wait_for_inputs(PDL)
    head, row = tl.program_id(0), tl.program_id(1)
    base = head * 2 * HALF
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    qk_ptr += row * stride_qk
    out_ptr += row * heads * 2 * HALF
    cos_ptr += row * stride_angles
    sin_ptr += row * stride_angles
    x1 = tl.load(qk_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(qk_ptr + base + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    if HEAD_NORM:  # masked lanes are zeros: they add nothing to the sum of squares
        scale = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / (2 * HALF) + eps)
        is_query = head < query_heads
        g1 = tl.where(is_query, tl.load(gq_ptr + offs, mask=mask, other=0.0),
                      tl.load(gk_ptr + offs, mask=mask, other=0.0)).to(tl.float32)
        g2 = tl.where(is_query, tl.load(gq_ptr + HALF + offs, mask=mask, other=0.0),
                      tl.load(gk_ptr + HALF + offs, mask=mask, other=0.0)).to(tl.float32)
        x1, x2 = x1 * scale * g1, x2 * scale * g2
    cos1 = tl.load(cos_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + base + offs, (x1 * cos1 - x2 * sin1).to(out_ty), mask=mask)
    tl.store(out_ptr + base + HALF + offs, (x2 * cos2 + x1 * sin2).to(out_ty), mask=mask)


def rotate_heads(qk: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor,
                 norms: HeadNorms | None = None) -> torch.Tensor:
    """RoPE on the first ``heads`` heads of each row's token in ``qk`` (rows, >= heads x
    head_dim), as transformers' ``apply_rotary_pos_emb``; ``cos`` and ``sin`` hold head_dim values
    for each row (or one row's for all). ``norms``: each head RMS-normalised first (as Qwen3's
    attention does). Returns (rows, heads x head_dim)."""
    rows = qk.shape[0]
    dim = cos.shape[-1]
    angles = cos.numel() // dim
    assert angles in (1, rows) and sin.shape[-1] == dim and sin.numel() == cos.numel() and dim % 2 == 0
    assert qk.dim() == 2 and qk.stride(1) == 1 and qk.shape[1] >= heads * dim
    assert norms is None or norms.query.numel() == dim == norms.key.numel()
    out = torch.empty((rows, heads * dim), dtype=qk.dtype, device=qk.device)
    query, key = (qk, qk) if norms is None else (norms.query, norms.key)
    _rotated[(heads, rows)](qk, cos.contiguous(), sin.contiguous(), out, query, key,
                            heads if norms is None else norms.query_heads, heads,
                            0.0 if norms is None else norms.eps, qk.stride(0), 0 if angles == 1 else dim,
                            HALF=dim // 2, BLOCK=triton.next_power_of_2(dim // 2),
                            HEAD_NORM=norms is not None, num_warps=1, **launch_options(qk.device))
    return out
