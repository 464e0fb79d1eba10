"""Checks of the many-row kernels of a decode step (lmql_hf.kernels.rows_kernel, and RoPE of many
rows in gemv_kernel) that the fused decoder layers run for many streams, against transformers' own
modules, on the CPU by Triton's interpreter. (The fused layers decoding many rows as the untouched
models do: one_row_layer_checks.py.)

Started by test_row_kernel.py with TRITON_INTERPRET=1 (pytest does not collect this file by itself).
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest
import torch
from torch.nn import functional

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_row_kernel.py"


@pytest.fixture(scope="module")
def kernel() -> ModuleType:
    from lmql_hf.kernels import gemv_kernel

    return gemv_kernel


def test_rope_of_many_rows_at_their_own_positions_matches_transformers(kernel: ModuleType) -> None:
    """Each row's token rotated by its own position's angles (a decode step of many streams)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(5)
    rows, heads, kv_heads, dim = 3, 4, 2, 16
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(rows, 1, dim // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    q = qkv[:, : heads * dim].view(rows, 1, heads, dim).transpose(1, 2)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(rows, 1, kv_heads, dim).transpose(1, 2)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    out = kernel.rotate_heads(qkv, heads + kv_heads, cos, sin)
    assert out.shape == (rows, (heads + kv_heads) * dim)
    assert torch.allclose(out[:, : heads * dim], want_q.transpose(1, 2).reshape(rows, -1), atol=1e-6)
    assert torch.allclose(out[:, heads * dim :], want_k.transpose(1, 2).reshape(rows, -1), atol=1e-6)


@pytest.mark.parametrize("k", [64, 100])  # 100: the block's masked lanes add nothing to the sum
def test_many_rows_norm_and_silu_times_up_match_transformers(k: int) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from lmql_hf.kernels import rows_kernel

    torch.manual_seed(k)
    norm = LlamaRMSNorm(k, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(5, k) * 3
    with torch.no_grad():
        want = norm(x)
    assert torch.allclose(rows_kernel.rms_norm(x, norm.weight.detach(), 1e-5), want, atol=1e-6)
    gate_up = torch.randn(5, 2 * k) * 2
    want = functional.silu(gate_up[:, :k]) * gate_up[:, k:]
    assert torch.allclose(rows_kernel.silu_mul(gate_up), want, atol=1e-6)


def test_many_rows_residual_add_and_layer_norm_match_transformers() -> None:
    from lmql_hf.kernels import rows_kernel

    torch.manual_seed(9)
    norm = torch.nn.LayerNorm(100, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    x, residual = torch.randn(4, 100) * 2 + 1, torch.randn(4, 100)
    total, normed = rows_kernel.add_layer_norm(x, residual, norm.weight.detach(), norm.bias.detach(), 1e-5)
    with torch.no_grad():
        assert torch.allclose(total, x + residual) and torch.allclose(normed, norm(x + residual), atol=1e-5)


@pytest.mark.parametrize("vocabulary", [50, 2048, 5003])  # under a block, one block, blocks and a part
def test_a_greedy_choice_in_one_pass_matches_log_softmax_and_max(vocabulary: int) -> None:
    """kernels/best_kernel against torch's log_softmax and max (the engine's choice before it):
    rows of plain logits, ties (the first wins), banned tokens (-inf), one row with a single
    allowed token, large logits, and a row with nothing allowed (token 0 at -inf)."""
    from lmql_hf.kernels import best_kernel

    torch.manual_seed(vocabulary)
    logits = torch.randn(6, vocabulary) * 4
    logits[1, [7, vocabulary - 3, 20]] = 50.0  # a three-way tie for the best: the first id wins
    logits[2, torch.rand(vocabulary) < 0.5] = float("-inf")
    logits[3] = float("-inf")
    logits[3, vocabulary - 1] = 2.5  # one token allowed: log-prob 0
    logits[4] += 3e4
    logits[5] = float("-inf")
    values, indices = best_kernel.best_of(logits)
    want_values, want_indices = torch.log_softmax(logits[:5], -1).max(-1, keepdim=True)
    assert indices.shape == values.shape == (6, 1) and indices.dtype == torch.int64
    assert torch.equal(indices[:5], want_indices) and int(indices[1]) == 7 and int(indices[3]) == vocabulary - 1
    assert torch.allclose(values[:5], want_values, rtol=1e-5, atol=1e-5), (values, want_values)
    assert int(indices[5]) == 0 and float(values[5]) == float("-inf")
