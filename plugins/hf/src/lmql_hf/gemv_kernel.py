"""A Triton kernel for the product of one row with a weight matrix: y = act(x @ w.T + b).

At one row a layer's matrix product is a matrix-vector product: all that matters is
reading the weights once at full memory bandwidth. On an H100 (3.35 TB/s) cuBLAS's one-row
products of gpt2-medium's layers (2-8 MB of weights each) read 0.5-1.2 TB/s; this kernel, 0.7-1.6,
and 2.8 on the LM head. Each program takes a couple of whole weight rows (contiguous, so every
load is wide and coalesced) and adds bias and activation in the same pass.
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTIVATIONS = {None: 0, "gelu_tanh": 1}


@triton.jit
def _row_times_weights(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]
        if EVEN_K:
            w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
            x = tl.load(x_ptr + offs_k)
        else:
            k_mask = offs_k < K
            w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0)
        acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if ACTIVATION == 1:  # tanh-GELU: 0.5 x (1 + tanh(u)) = x * sigmoid(2u)
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * u)
    tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


def block_sizes(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps), from a sweep over the gpt2-medium shapes on an H100
    (benchmarks/gemv_bench.py): a couple of whole rows per program; long rows get one, more warps."""
    if k >= 4096:
        return 1, 2048, 4
    return 2, min(triton.next_power_of_2(k), 1024), 2


def row_times_weights(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      activation: str | None = None,
                      config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` for one row ``x`` of shape (1, K) and ``weight`` of shape (N, K)."""
    n, k = weight.shape
    assert x.shape == (1, k) and x.is_contiguous() and weight.stride(1) == 1
    block_n, block_k, warps = config or block_sizes(n, k)
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _row_times_weights[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0, HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS[activation], num_warps=warps)
    return y
