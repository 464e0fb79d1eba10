"""Checks of the one-row Triton kernel of the HF backend's fused modules, run on the CPU by
Triton's interpreter: the same kernel source that runs on the GPU, against float64 references.

Triton decides at import whether it interprets, so these run in a process of their own, started
by test_row_kernel.py with TRITON_INTERPRET=1 (pytest does not collect this file by itself).
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


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    out = functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return functional.gelu(out, approximate="tanh") if activation else out


@pytest.mark.parametrize(("n", "k", "config"), [
    (96, 64, None),  # default blocks: two rows per program, all of K at once
    (101, 48, (4, 32, 4)),  # N not a multiple of the block; K not either (masked loads)
    (37, 256, (8, 64, 2)),  # several passes over K
    (5, 4096, None),  # long rows: the one-row-per-program configuration
])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_one_row_products_match_float64(kernel: ModuleType, n: int, k: int, config: tuple | None, dtype: str) -> None:
    torch.manual_seed(n * k)
    for bias_on in (True, False):
        for activation in (None, "gelu_tanh"):
            x = torch.randn(1, k).to(getattr(torch, dtype))
            weight = (torch.randn(n, k) / k ** 0.5).to(x.dtype)
            bias = torch.randn(n).to(x.dtype) if bias_on else None
            out = kernel.row_times_weights(x, weight, bias, activation, config)
            want = reference(x, weight, bias, activation)
            assert out.shape == (1, n) and out.dtype == x.dtype
            error = float((out.double() - want).norm() / want.norm())
            assert error < (1e-6 if dtype == "float32" else 2e-3), (bias_on, activation, error)


def test_the_kernel_refuses_what_it_cannot_compute(kernel: ModuleType) -> None:
    weight = torch.randn(8, 16)
    with pytest.raises(AssertionError):
        kernel.row_times_weights(torch.randn(2, 16), weight, None)  # two rows: cuBLAS's job
    with pytest.raises(AssertionError):
        kernel.row_times_weights(torch.randn(1, 16), weight.t().contiguous().t(), None)  # strided rows


def test_a_fused_gpt2_computes_one_row_through_the_kernel(kernel: ModuleType, small_gpt2: str) -> None:
    """Every linear layer of GPT-2 (and the GELU inside its MLP) swapped: one token's logits come
    from the kernel, a prompt's from cuBLAS, both as the untouched model computes them."""
    from transformers import GPT2LMHeadModel

    from lmql_hf.cuda import fused

    model = GPT2LMHeadModel.from_pretrained(small_gpt2).eval()
    ids = torch.tensor([[5, 7, 9, 11]])
    with torch.no_grad():
        want = model(ids).logits
        # per layer: the MLP (GELU into its first product) and the block (one_row_layers); the LM head
        assert fused.fuse(model) == 2 * 2 + 1
        mlp = model.transformer.h[0].mlp
        assert type(mlp.c_fc) is fused.OneRowLinear and mlp.c_fc.activation == "gelu_tanh"
        assert model.lm_head.weight is model.transformer.wte.weight  # still tied, not copied
        one_row, prompt = model(ids[:, :1]).logits, model(ids).logits
    assert mlp.c_fc.kernel is kernel
    assert torch.allclose(one_row[0, 0], want[0, 0], atol=1e-5)
    assert torch.allclose(prompt, want, atol=1e-5)
