"""Decode attention over the slot cache that reads each row's keys only up to its own position.

A decode step's attention (one new query per row) is a read of the cache: SDPA with a mask reads
every row up to the step's length bucket, which the longest row sets, so a batch of mixed
lengths (long prompts beside short ones) reads mostly masked-out keys. Here each program takes
one row, one key/value head and one span of positions, and stops at the row's length; all the
query heads sharing that key/value head (grouped-query attention) are one block of queries, so
the cache is read once. Where rows x heads are too few to fill the GPU, a row's positions are
split into spans whose partial softmax sums a second kernel combines (flash-decoding).
The split depends only on tensor shapes, so a step captured in a CUDA graph replays with any
positions. Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # keys per loop iteration
MIN_SPAN = 256  # positions: a split shorter than this costs more to combine than it saves
TARGET_PROGRAMS = 512  # about four per multiprocessor of an H100/H200


@triton.jit
def _attend_span(q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, part_ptr, stats_ptr,
                 stride_qr, stride_qh, stride_kr, stride_kh, stride_kn, stride_vr, stride_vh, stride_vn,
                 stride_pos, scale, group, dim, heads, splits, span,
                 GROUP: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    row, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    length = tl.load(pos_ptr + row * stride_pos) + 1  # the row sees positions 0..its own
    start = split * span
    end = tl.minimum(start + span, length)
    g, d = tl.arange(0, GROUP), tl.arange(0, DIM)
    head = kv_head * group + g
    q_mask = (g < group)[:, None] & (d < dim)[None, :]
    q = tl.load(q_ptr + row * stride_qr + head[:, None] * stride_qh + d[None, :], mask=q_mask, other=0.0)
    keys = k_ptr + row * stride_kr + kv_head * stride_kh
    values = v_ptr + row * stride_vr + kv_head * stride_vh
    best = tl.full((GROUP,), float("-inf"), tl.float32)
    total = tl.zeros((GROUP,), tl.float32)
    acc = tl.zeros((GROUP, DIM), tl.float32)
    for n0 in range(start, end, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        kv_mask = (n < end)[:, None] & (d < dim)[None, :]
        k = tl.load(keys + n[:, None] * stride_kn + d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # float32 models: no TF32
        scores = tl.where((n < end)[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, 1))
        weights = tl.exp(scores - new_best[:, None])
        rescale = tl.exp(best - new_best)
        total = total * rescale + tl.sum(weights, 1)
        v = tl.load(values + n[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision="ieee")
        best = new_best
    if SPLIT:  # partial sums, combined by _combine_spans
        at = (row * heads + head) * splits + split
        tl.store(part_ptr + at[:, None] * DIM + d[None, :], acc, mask=q_mask)
        tl.store(stats_ptr + at * 2, best, mask=g < group)
        tl.store(stats_ptr + at * 2 + 1, total, mask=g < group)
    else:
        out = acc / total[:, None]
        tl.store(out_ptr + (row * heads + head)[:, None] * dim + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _combine_spans(part_ptr, stats_ptr, pos_ptr, out_ptr, stride_pos, dim, heads, splits, span,
                   SPLITS: tl.constexpr, DIM: tl.constexpr):
    row, head = tl.program_id(0), tl.program_id(1)
    length = tl.load(pos_ptr + row * stride_pos) + 1
    s, d = tl.arange(0, SPLITS), tl.arange(0, DIM)
    used = (s < splits) & (s * span < length)  # split 0 is never empty
    at = (row * heads + head) * splits + s
    best = tl.load(stats_ptr + at * 2, mask=used, other=float("-inf"))
    total = tl.load(stats_ptr + at * 2 + 1, mask=used, other=0.0)
    weight = tl.where(used, tl.exp(best - tl.max(best, 0)), 0.0)
    part_mask = used[:, None] & (d < dim)[None, :]
    parts = tl.load(part_ptr + at[:, None] * DIM + d[None, :], mask=part_mask, other=0.0)
    out = tl.sum(parts * weight[:, None], 0) / tl.sum(total * weight, 0)
    tl.store(out_ptr + (row * heads + head) * dim + d, out.to(out_ptr.dtype.element_ty), mask=d < dim)


def split_of(rows: int, kv_heads: int, length: int) -> tuple[int, int]:
    """(splits, positions per split) for ``rows`` rows reading up to ``length`` positions."""
    wanted = max(1, min(triton.cdiv(TARGET_PROGRAMS, rows * kv_heads), length // MIN_SPAN))
    span = triton.cdiv(triton.cdiv(length, wanted), BLOCK_N) * BLOCK_N
    return triton.cdiv(length, span), span


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     positions: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal attention of one query per row: ``query`` (rows, heads, 1, dim); ``key`` and
    ``value`` (rows, kv_heads, length, dim), of which row i reads positions 0..``positions[i]``
    (a 1-D integer tensor, on the device). Returns (rows, 1, heads, dim), as transformers'
    attention functions do."""
    rows, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    assert query.stride(3) == key.stride(3) == value.stride(3) == 1 and heads % kv_heads == 0
    group = heads // kv_heads
    block_dim = max(16, triton.next_power_of_2(dim))  # tl.dot's smallest side
    out = query.new_empty((rows, 1, heads, dim))
    splits, span = split_of(rows, kv_heads, length)
    part = stats = out  # unused without a split
    if splits > 1:
        part = torch.empty((rows, heads, splits, block_dim), dtype=torch.float32, device=query.device)
        stats = torch.empty((rows, heads, splits, 2), dtype=torch.float32, device=query.device)
    _attend_span[(rows, kv_heads, splits)](
        query, key, value, positions, out, part, stats,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), positions.stride(0),
        scale if scale is not None else dim ** -0.5, group, dim, heads, splits, span,
        GROUP=max(16, triton.next_power_of_2(group)), DIM=block_dim, BLOCK=BLOCK_N, SPLIT=splits > 1,
        num_warps=4)
    if splits > 1:
        _combine_spans[(rows, heads)](part, stats, positions, out, positions.stride(0), dim, heads,
                                      splits, span, SPLITS=triton.next_power_of_2(splits), DIM=block_dim)
    return out
