"""A Triton kernel writing a pass's new keys and values into the slot cache: both in one launch.

``keys[slots, :, positions] = key_states`` runs as an indexing kernel of ~3 us for keys and
another for values, in every layer: a decode step of one stream is bound by such launches
(gpt2-medium: 48 of its ~190). One program writes one token's head, key and value.
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_tokens(new_k_ptr, new_v_ptr, keys_ptr, values_ptr, slots_ptr, positions_ptr, T,
                  k_batch, k_head, k_token, v_batch, v_head, v_token, slot_row, slot_token,
                  cache_slot, cache_head, cache_position,
                  DIM: tl.constexpr, BLOCK: tl.constexpr):
    row_token, head = tl.program_id(0), tl.program_id(1)
    row, token = row_token // T, row_token % T
    slot = tl.load(slots_ptr + row * slot_row + token * slot_token)
    position = tl.load(positions_ptr + row * slot_row + token * slot_token)
    offs = tl.arange(0, BLOCK)
    mask = offs < DIM
    at = slot * cache_slot + head * cache_head + position * cache_position + offs
    key = tl.load(new_k_ptr + row * k_batch + head * k_head + token * k_token + offs, mask=mask)
    value = tl.load(new_v_ptr + row * v_batch + head * v_head + token * v_token + offs, mask=mask)
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
    _write_tokens[(rows * tokens, heads)](
        key_states, value_states, keys, values, slots, positions, tokens,
        *key_states.stride()[:3], *value_states.stride()[:3], *slots.stride(), *keys.stride()[:3],
        DIM=dim, BLOCK=triton.next_power_of_2(dim), num_warps=1)
