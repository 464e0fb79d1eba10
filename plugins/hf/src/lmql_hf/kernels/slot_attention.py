"""Attention over the slot cache as one Triton kernel, for decode steps and packed prompt chunks.

Each program takes a tile of query tokens of one sequence (one token in a decode step; up to
``PROMPT_TILE`` in a prompt chunk) and one key/value head, with all the query heads sharing that
head (grouped-query attention) as rows of the same block, so the cache is read once per tile.
It reads the sequence's slot from position 0 up to its last token only, causally: a batch of
mixed lengths reads no masked-out keys (SDPA with a mask reads every row up to the step's
longest). Where a decode step's rows x heads are too few to fill the GPU, a row's positions are
split into spans whose partial softmax sums a second kernel combines (flash-decoding); given the
whole context rather than the rows' bucket (``--any_length_graphs``), every row is split so, in
even spans (``split_of``).
Everything about a step but its shapes lives in device tensors (positions; for prompt chunks a
table of tiles), so a pass captured in a CUDA graph replays with any sequences.
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmql_hf.kernels.dependent_launch import launch_options, wait_for_inputs
from lmql_hf.kernels.tiles import tokens_per_tile

BLOCK_N = 64  # keys per loop iteration
MIN_SPAN = 256  # positions: a split shorter than this costs more to combine than it saves
TARGET_PROGRAMS = 512  # about four per multiprocessor of an H100/H200
EVEN_SPLITS = 16  # with ``even``: the most spans a row's positions split into (more: more empty programs)


@triton.jit
def _attend(q_ptr, k_ptr, v_ptr, pos_ptr, tiles_ptr, out_ptr, part_ptr, stats_ptr, new_k_ptr, new_v_ptr,
            new_slots_ptr, stride_qt, stride_qh, stride_ot, stride_oh, stride_kr, stride_kh, stride_kn,
            stride_vr, stride_vh, stride_vn, stride_pos, stride_tiles, stride_nkr, stride_nkh, stride_nvr,
            stride_nvh, stride_ns, first_slot, scale, group, dim, heads, splits, span,
            TOKENS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr,
            SPLIT: tl.constexpr, TILED: tl.constexpr, PRECISION: tl.constexpr, NEW: tl.constexpr,
            PDL: tl.constexpr):
    wait_for_inputs(PDL)
    tile, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if TILED:  # a prompt chunk's tile, from the table
        first = tl.load(tiles_ptr + tile)
        count = tl.load(tiles_ptr + stride_tiles + tile)
        slot = tl.load(tiles_ptr + 2 * stride_tiles + tile)
        at = tl.load(tiles_ptr + 3 * stride_tiles + tile)
    else:  # a decode row: row i is token i and reads slot i (the keys given start at its slot)
        first, count, slot = tile, 1, tile
        at = tl.load(pos_ptr + tile * stride_pos)
    r, d = tl.arange(0, TOKENS * GROUP), tl.arange(0, DIM)
    t, g = r // GROUP, r % GROUP  # each row: a token of the tile and one of its query heads
    token, head = first + t, kv_head * group + g
    seen = at + t  # the last position each row's query sees
    rows_ok = (t < count) & (g < group)
    q_mask = rows_ok[:, None] & (d < dim)[None, :]
    q_at = q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_at, mask=q_mask, other=0.0)
    keys = k_ptr + slot.to(tl.int64) * stride_kr + kv_head * stride_kh
    values = v_ptr + slot.to(tl.int64) * stride_vr + kv_head * stride_vh
    start = split * span
    # NEW: a decode row's own key and value come apart from the cache (``decode_attention``'s
    # ``new``); the split holding its position writes them into the row's slot (a padding row's
    # is the scratch slot, not the one it reads)
    end = tl.minimum(start + span, at + (0 if NEW else count))
    best = tl.full((TOKENS * GROUP,), float("-inf"), tl.float32)
    total = tl.zeros((TOKENS * GROUP,), tl.float32)
    acc = tl.zeros((TOKENS * GROUP, DIM), tl.float32)
    for n0 in range(start, end, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        kv_mask = (n < end)[:, None] & (d < dim)[None, :]
        k = tl.load(keys + n[:, None] * stride_kn + d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        # causal; a row's first block always holds position 0, so its running maximum is finite
        scores = tl.where((n[None, :] <= seen[:, None]) & (n < end)[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, 1))
        weights = tl.exp(scores - new_best[:, None])
        rescale = tl.exp(best - new_best)
        total = total * rescale + tl.sum(weights, 1)
        v = tl.load(values + n[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=PRECISION)
        best = new_best
    if NEW:  # noqa: SIM102  (Triton: a compile-time condition, then one at run time)
        if (at >= start) & (at < start + span):
            into = (tl.load(new_slots_ptr + tile * stride_ns) - first_slot).to(tl.int64)
            best, total, acc = _with_new_token(
                q, d, dim, scale, best, total, acc,
                k_ptr + into * stride_kr + kv_head * stride_kh + at * stride_kn,
                v_ptr + into * stride_vr + kv_head * stride_vh + at * stride_vn,
                new_k_ptr + tile * stride_nkr + kv_head * stride_nkh,
                new_v_ptr + tile * stride_nvr + kv_head * stride_nvh)
    if SPLIT:  # a decode row's partial sums, combined by _combine_spans
        part = (tile * heads + head) * splits + split
        tl.store(part_ptr + part[:, None] * DIM + d[None, :], acc, mask=q_mask)
        tl.store(stats_ptr + part * 2, best, mask=rows_ok)
        tl.store(stats_ptr + part * 2 + 1, total, mask=rows_ok)
    else:
        out = acc / tl.maximum(total, 1.0)[:, None]  # >= 1 where a row is real (its best weighs 1)
        tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _with_new_token(q, d, dim, scale, best, total, acc, key_at, value_at, new_k, new_v):
    """The running softmax sums with one more position, whose key and value come from ``new_k`` and
    ``new_v``, as the cache would have them (rounded to its dtype); written at ``key_at`` and
    ``value_at`` in the cache."""
    key = tl.load(new_k + d, mask=d < dim, other=0.0).to(key_at.dtype.element_ty)
    value = tl.load(new_v + d, mask=d < dim, other=0.0).to(value_at.dtype.element_ty)
    score = tl.sum(q.to(tl.float32) * key.to(tl.float32)[None, :], 1) * scale
    new_best = tl.maximum(best, score)
    weight = tl.exp(score - new_best)
    rescale = tl.exp(best - new_best)
    total = total * rescale + weight
    rounded = weight.to(value.dtype).to(tl.float32)  # as the cached positions' weights are
    acc = acc * rescale[:, None] + rounded[:, None] * value.to(tl.float32)[None, :]
    tl.store(key_at + d, key, mask=d < dim)
    tl.store(value_at + d, value, mask=d < dim)
    return new_best, total, acc


@triton.jit
def _combine_spans(part_ptr, stats_ptr, pos_ptr, out_ptr, stride_pos, dim, heads, splits, span,
                   SPLITS: tl.constexpr, DIM: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
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


def _precision(query: torch.Tensor) -> str:
    """float32 models get float32 products (not TF32, which rounds to 10 bits and flipped greedy
    tokens against the CPU); half precision runs on tensor cores either way."""
    return "ieee" if query.dtype == torch.float32 else "tf32"


def split_of(rows: int, kv_heads: int, length: int, even: bool = False) -> tuple[int, int]:
    """(splits, positions per split) for ``rows`` decode rows reading up to ``length`` positions.
    With ``even`` every row is split in spans of the same size whatever the rows: where
    ``length`` is the context rather than the rows' bucket it says nothing of the rows' lengths,
    and programs of one span each keep a mix of short and long rows evenly spread over the GPU
    (a row's spans past its length end at once)."""
    if even:
        span = max(MIN_SPAN, triton.cdiv(triton.cdiv(length, EVEN_SPLITS), BLOCK_N) * BLOCK_N)
        return triton.cdiv(length, span), span
    wanted = max(1, min(triton.cdiv(TARGET_PROGRAMS, rows * kv_heads), length // MIN_SPAN))
    span = triton.cdiv(triton.cdiv(length, wanted), BLOCK_N) * BLOCK_N
    return triton.cdiv(length, span), span


def _sizes(heads: int, kv_heads: int, dim: int) -> tuple[int, int]:
    """(padded group of query heads, padded head size): tl.dot's sides are powers of two >= 16."""
    assert heads % kv_heads == 0
    return triton.next_power_of_2(heads // kv_heads), max(16, triton.next_power_of_2(dim))


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     positions: torch.Tensor, scale: float | None = None, even: bool = False,
                     new: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
    """Causal attention of one query per row: ``query`` (rows, heads, 1, dim); ``key`` and
    ``value`` (rows, kv_heads, length, dim), of which row i reads positions 0..``positions[i]``
    (a 1-D integer tensor, on the device). Returns (rows, 1, heads, dim), as transformers'
    attention functions do. ``even``: positions split as ``split_of`` says. ``new``: (keys,
    values, slots, first): each row's key and value at its position, (rows, kv_heads, 1, dim)
    each, not in ``key`` and ``value`` yet; the kernel uses them and writes them at its position
    of slot ``slots[i, 0]`` (row i reads slot ``first`` + i of the cache that ``key`` views; a
    padding row may write another one), one launch fewer than a write before it."""
    rows, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    assert query.stride(3) == key.stride(3) == value.stride(3) == 1
    new_key, new_value, new_slots, first_slot = new if new is not None else (query, query, positions, 0)
    assert new is None or (new_key.shape == new_value.shape == (rows, kv_heads, 1, dim)
                           and new_key.stride(3) == new_value.stride(3) == 1 and new_slots.shape[0] == rows)
    group, block_dim = _sizes(heads, kv_heads, dim)
    out = query.new_empty((rows, 1, heads, dim))
    splits, span = split_of(rows, kv_heads, length, even)
    part = stats = out  # unused without a split
    if splits > 1:
        part = torch.empty((rows, heads, splits, block_dim), dtype=torch.float32, device=query.device)
        stats = torch.empty((rows, heads, splits, 2), dtype=torch.float32, device=query.device)
    _attend[(rows, kv_heads, splits)](
        query, key, value, positions, positions, out, part, stats, new_key, new_value, new_slots,
        query.stride(0), query.stride(1), out.stride(0), out.stride(2), key.stride(0), key.stride(1),
        key.stride(2), value.stride(0), value.stride(1), value.stride(2), positions.stride(0), 0,
        new_key.stride(0), new_key.stride(1), new_value.stride(0), new_value.stride(1), new_slots.stride(0),
        first_slot,
        scale if scale is not None else dim ** -0.5, heads // kv_heads, dim, heads, splits, span,
        TOKENS=1, GROUP=max(16, group), DIM=block_dim, BLOCK=BLOCK_N, SPLIT=splits > 1, TILED=False,
        PRECISION=_precision(query), NEW=new is not None, num_warps=4, **launch_options(query.device))
    if splits > 1:
        _combine_spans[(rows, heads)](part, stats, positions, out, positions.stride(0), dim, heads,
                                      splits, span, SPLITS=triton.next_power_of_2(splits), DIM=block_dim,
                                      **launch_options(query.device))
    return out


def prompt_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tiles: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Causal attention of packed prompt chunks: ``query`` (1, heads, T, dim), the tokens of
    every chunk side by side; ``key`` and ``value`` the whole cache (slots, kv_heads, length,
    dim), this pass's keys written already; ``tiles`` a device tensor from ``tiles.tile_table``. Each
    token attends to its slot's positions up to its own. Returns (1, T, heads, dim); rows of no
    tile (padding) are left unwritten."""
    _, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    assert query.stride(3) == key.stride(3) == value.stride(3) == 1
    group, block_dim = _sizes(heads, kv_heads, dim)
    out = query.new_empty((1, query.shape[2], heads, dim))
    _attend[(tiles.shape[1], kv_heads, 1)](
        query, key, value, tiles, tiles, out, out, out, out, out, tiles,
        query.stride(2), query.stride(1), out.stride(1), out.stride(2), key.stride(0), key.stride(1),
        key.stride(2), value.stride(0), value.stride(1), value.stride(2), 0, tiles.stride(0),
        0, 0, 0, 0, 0, 0,
        scale if scale is not None else dim ** -0.5, heads // kv_heads, dim, heads, 1, key.shape[2],
        TOKENS=tokens_per_tile(heads, kv_heads), GROUP=group, DIM=block_dim, BLOCK=BLOCK_N, SPLIT=False,
        TILED=True, PRECISION=_precision(query), NEW=False, num_warps=4, **launch_options(query.device))
    return out
