"""Triton kernels over the slot cache: writing a pass's new keys and values, and moving slots.

``keys[slots, :, positions] = key_states`` runs as an indexing kernel of ~3 us for keys and
another for values, in every layer: a decode step of one stream is bound by such launches
(gpt2-medium: 48 of its ~190). ``write_tokens`` writes both in one launch, a program per token.

Moving a slot (a cached prefix out of the way of a new sequence, running sequences down into
freed slots) copies a strided view of a cache tensor of more than 2**31 elements: PyTorch
splits such a copy into 16 launches per tensor, so every admitted prompt cost 32 launches
(gpt2-medium: 3.5 ms of host and GPU time for a SCORE batch of 30). ``move_slots`` moves keys
and values of every layer, for every slot a pass admits, in one launch.
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmql_hf.kernels.dependent_launch import launch_options, wait_for_inputs

MOVE_BLOCK = 1024  # elements a program moves (of one layer, slot and head: its positions x dim)


# Integer arguments that vary from pass to pass are not specialized on (Triton compiles a variant
# for a value of 1 and for multiples of 16): every variant a request can need is then compiled by
# the warm-up before Ready (a compile is ~0.1 s).
@triton.jit(do_not_specialize=["T", "k_batch", "v_batch", "slot_row", "slot_token"])
def _write_tokens(new_k_ptr, new_v_ptr, keys_ptr, values_ptr, slots_ptr, positions_ptr, T,
                  k_batch, k_head, k_token, v_batch, v_head, v_token, slot_row, slot_token,
                  cache_slot, cache_head, cache_position,
                  HEADS: tl.constexpr, DIM: tl.constexpr, HEADS_BLOCK: tl.constexpr,
                  DIM_BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    row_token = tl.program_id(0)
    row, token = row_token // T, row_token % T
    slot = tl.load(slots_ptr + row * slot_row + token * slot_token)
    position = tl.load(positions_ptr + row * slot_row + token * slot_token)
    heads = tl.arange(0, HEADS_BLOCK)[:, None]
    dims = tl.arange(0, DIM_BLOCK)[None, :]
    mask = (heads < HEADS) & (dims < DIM)
    at = slot * cache_slot + heads * cache_head + position * cache_position + dims
    key = tl.load(new_k_ptr + row * k_batch + heads * k_head + token * k_token + dims, mask=mask)
    value = tl.load(new_v_ptr + row * v_batch + heads * v_head + token * v_token + dims, mask=mask)
    tl.store(keys_ptr + at, key.to(keys_ptr.dtype.element_ty), mask=mask)
    tl.store(values_ptr + at, value.to(values_ptr.dtype.element_ty), mask=mask)


def write_tokens(keys: torch.Tensor, values: torch.Tensor, key_states: torch.Tensor,
                 value_states: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> None:
    """``keys[slots, :, positions] = key_states.transpose(1, 2)``, and the same for values:
    ``key_states`` (rows, heads, tokens, dim), ``slots`` and ``positions`` (rows, tokens),
    ``keys`` (slots, heads, max_len, dim); each with a unit stride along dim."""
    rows, heads, tokens, dim = key_states.shape
    assert value_states.shape == key_states.shape and slots.shape == positions.shape == (rows, tokens)
    assert slots.stride() == positions.stride() and keys.stride() == values.stride()
    assert key_states.stride(3) == value_states.stride(3) == keys.stride(3) == 1
    heads_block, dim_block = triton.next_power_of_2(heads), triton.next_power_of_2(dim)
    _write_tokens[(rows * tokens,)](
        key_states, value_states, keys, values, slots, positions, tokens,
        *key_states.stride()[:3], *value_states.stride()[:3], *slots.stride(), *keys.stride()[:3],
        HEADS=heads, DIM=dim, HEADS_BLOCK=heads_block, DIM_BLOCK=dim_block,
        num_warps=4 if heads_block * dim_block >= 1024 else 1, **launch_options(keys.device))


@triton.jit
def _move(ptr, into, from_, offs, mask, SWAP: tl.constexpr):
    moving = tl.load(ptr + from_ + offs, mask=mask)
    if SWAP:
        tl.store(ptr + from_ + offs, tl.load(ptr + into + offs, mask=mask), mask=mask)
    tl.store(ptr + into + offs, moving, mask=mask)


@triton.jit(do_not_specialize=["pairs"])
def _move_slots(keys_ptr, values_ptr, moves_ptr, pairs, HEADS, layer_stride, slot_stride,
                head_stride, DIM: tl.constexpr, SWAP: tl.constexpr, BLOCK: tl.constexpr):
    layer_head, pair, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    layer, head = layer_head // HEADS, layer_head % HEADS
    base = layer.to(tl.int64) * layer_stride + head.to(tl.int64) * head_stride
    into = base + tl.load(moves_ptr + pair) * slot_stride
    from_ = base + tl.load(moves_ptr + pairs + pair) * slot_stride
    count = tl.load(moves_ptr + 2 * pairs + pair) * DIM
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < count
    _move(keys_ptr, into, from_, offs, mask, SWAP)
    _move(values_ptr, into, from_, offs, mask, SWAP)


def move_slots(keys: torch.Tensor, values: torch.Tensor, moves: torch.Tensor, longest: int,
               swap: bool) -> None:
    """``moves`` (3, pairs): for each pair i, slot ``moves[0, i]`` of every layer takes the first
    ``moves[2, i]`` positions of slot ``moves[1, i]`` (``swap``: and gives its own back);
    ``longest`` is the most positions of a pair. ``keys`` and ``values`` are (layers, slots,
    heads, max_len, dim), contiguous; a slot appears in one pair at most."""
    layers, _, heads, _, dim = keys.shape
    assert keys.shape == values.shape and keys.is_contiguous() and values.is_contiguous()
    assert moves.is_contiguous() and moves.shape[0] == 3
    pairs = moves.shape[1]
    # a slot's positions of one head are contiguous: a pair moves the first length x dim elements
    grid = (layers * heads, pairs, triton.cdiv(longest * dim, MOVE_BLOCK))
    _move_slots[grid](keys, values, moves, pairs, heads, keys.stride(0), keys.stride(1), keys.stride(2),
                      DIM=dim, SWAP=swap, BLOCK=MOVE_BLOCK, num_warps=4)
