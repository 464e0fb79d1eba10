"""A greedy step's choice in one kernel: each row's best token and its log-softmax value.

Sampling greedily took a log-softmax over the vocabulary, a max over it, and their copies: a few
launches and two passes over every row, ~0.2-0.3 ms of a one-stream step (Qwen3's 152k-token
rows: a third of it). Here one program per row reads it once, keeping for each lane its best
value, where it was (the first, on ties) and its sum of exp(x - best), rescaled as the best
grows (the online softmax); the lanes combine at the end. The log-prob of the best token is then
-log(sum of exp(x - max)). A row of -inf only (nothing allowed) gives token 0 at -inf.
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmql_hf.kernels.dependent_launch import launch_options, wait_for_inputs

BLOCK = 2048  # values a program reads per loop


@triton.jit
def _best_of(x_ptr, values_ptr, indices_ptr, V, stride, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    x_ptr += row.to(tl.int64) * stride
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    at = tl.zeros((BLOCK,), tl.int32)
    total = tl.zeros((BLOCK,), tl.float32)
    for v0 in range(0, V, BLOCK):
        offs = v0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        higher = tl.maximum(best, x)
        # a lane still at -inf has nothing to sum (and -inf - -inf would be NaN)
        total = tl.where(higher == float("-inf"), 0.0, total * tl.exp(best - higher) + tl.exp(x - higher))
        at = tl.where(x > best, offs, at)  # strictly greater: a lane keeps its first of equal values
        best = higher
    top = tl.max(best, 0)
    index = tl.min(tl.where(best == top, at, V), 0)  # the first of equal maxima over the row
    total = tl.sum(tl.where(best == float("-inf"), 0.0, total * tl.exp(best - top)), 0)
    value = tl.where(top == float("-inf"), float("-inf"), -tl.log(total))
    tl.store(values_ptr + row, value)
    tl.store(indices_ptr + row, index.to(tl.int64))


def best_of(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), (rows, 1) each: each row's best token (the first of equal maxima) and
    its log-softmax value, as ``torch.log_softmax(logits, -1).max(-1, keepdim=True)`` gives them
    (to float32 rounding) from float32 ``logits`` (rows, vocabulary) with unit stride."""
    rows, vocabulary = logits.shape
    assert logits.dtype == torch.float32 and logits.stride(1) == 1
    values = torch.empty((rows, 1), dtype=torch.float32, device=logits.device)
    indices = torch.empty((rows, 1), dtype=torch.int64, device=logits.device)
    _best_of[(rows,)](logits, values, indices, vocabulary, logits.stride(0), BLOCK=BLOCK, num_warps=8,
                      **launch_options(logits.device))
    return values, indices
