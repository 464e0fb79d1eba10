"""A KV cache of fixed slots: one slot per sequence, each position written where it belongs.

Every layer keeps keys and values as (slots, kv_heads, max_len, head_dim) buffers allocated
once, so shapes never change and decode steps can be captured as CUDA graphs. A forward pass
runs over a contiguous range of slots with per-row positions; the attention mask (built by the
caller) hides every position past a row's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Cache

from lmql_core.plugin import TorchOps
from lmql_hf.cache import packed

_OPS = TorchOps()  # slot numbers reach the GPU without waiting for the work queued there
# slot pairs exchanged per gather: its copy holds 2 x this many slots of one tensor (keys or
# values), which GPU memory planning reserves (memory.py): not half the cache at once
SWAPS_AT_ONCE = 4


class SlotCache(Cache):
    def __init__(self, layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, devices: list[torch.device]) -> None:
        # Not calling Cache.__init__: its signature differs between transformers releases and
        # we implement every method the models call.
        self.layers = []
        self.layer_class_to_replicate = None
        self.offloading = False
        # One (layers, slots, ...) tensor per device and kind, so moving a slot is one copy per
        # tensor rather than one per layer; each layer uses a view of its device's tensor.
        shape = (slots, kv_heads, max_len, head_dim)
        self.groups: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = [torch.empty(0)] * layers
        self.values: list[torch.Tensor] = [torch.empty(0)] * layers
        for device in dict.fromkeys(devices):
            on_device = [i for i in range(layers) if devices[i] == device]
            for views in (self.keys, self.values):
                group = torch.zeros((len(on_device), *shape), dtype=dtype, device=device)
                self.groups.append(group)
                for index, layer in enumerate(on_device):
                    views[layer] = group[index]  # a plain view (unbind's may not be written)
        self.slots, self.max_len = slots, max_len
        # Set before each forward pass (static tensors when replayed from a CUDA graph):
        self.write_slots: torch.Tensor | None = None  # (rows, new tokens): the slot of each token
        self.positions: torch.Tensor | None = None  # (rows, new tokens): its position there
        self.read_rows = slice(0, 0)  # the slots attention reads, one per row
        self.read_len = 0  # positions attention reads
        # write the new keys and values, and move slots, in one kernel each (cache_kernels), where set
        self.write_tokens: Callable[..., None] | None = None
        self.move_slots: Callable[..., None] | None = None
        # copies (into, from, length) not launched yet: launched together by ``flush``
        self._copies: list[tuple[int, int, int]] = []

    def use_kernels(self) -> bool:
        """Write and move through the Triton kernels from now on, where Triton is installed."""
        try:
            from lmql_hf.kernels import cache_kernels
        except ImportError:
            return False
        assert len(self.groups) == 2, "the kernels move keys and values of one device"
        self.write_tokens, self.move_slots = cache_kernels.write_tokens, cache_kernels.move_slots
        return True

    def bind(self, write_slots: torch.Tensor, positions: torch.Tensor, read_rows: slice,
             read_len: int) -> None:
        self.write_slots, self.positions = write_slots, positions
        self.read_rows, self.read_len = read_rows, read_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        slots, positions = self.write_slots, self.positions
        assert slots is not None and positions is not None
        # every call is host work for each layer of every eager pass: no-op casts and moves are skipped
        if slots.device != keys.device:  # layers spread over devices
            slots, positions = slots.to(keys.device), positions.to(keys.device)
        if key_states.dtype != keys.dtype:
            key_states, value_states = key_states.to(keys.dtype), value_states.to(keys.dtype)
        # (rows, heads, new, dim) -> written at [slot, :, position, :]
        if (self.write_tokens is not None and slots.stride() == positions.stride()
                and key_states.stride(3) == value_states.stride(3) == 1):
            self.write_tokens(keys, values, key_states, value_states, slots, positions)
        else:
            keys[slots, :, positions] = key_states.transpose(1, 2)
            values[slots, :, positions] = value_states.transpose(1, 2)
        return self._read_views(keys, values)

    def update_in_attention(self, key_states: torch.Tensor, value_states: torch.Tensor,
                            layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """As ``update``, for a decode pass whose attention is the slot kernel: the keys and values
        the attention reads, with this step's left for it to write (``packed.leave_to_attention``);
        None where it cannot (no kernel writes, layers spread over devices): then ``update``.
        Row i writes its slot (``write_slots[i]``) as ``update`` would."""
        keys, values, slots = self.keys[layer_idx], self.values[layer_idx], self.write_slots
        if (self.write_tokens is None or slots is None or key_states.shape[2] != 1
                or key_states.device != keys.device or slots.device != keys.device):
            return None
        packed.leave_to_attention(key_states, value_states, slots, self.read_rows.start or 0)
        return self._read_views(keys, values)

    def _read_views(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the pass's attention reads of one layer's keys and values: its rows, its length."""
        return keys[self.read_rows, :, : self.read_len], values[self.read_rows, :, : self.read_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions always come from position_ids

    def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.read_len, 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def is_compileable(self) -> bool:
        return True

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Slot ``target`` takes the first ``length`` positions of ``source``. Through the kernel
        the copy waits for ``flush`` (before the next pass), so the copies of every prompt a pass
        admits are one launch."""
        if self.move_slots is None:
            for group in self.groups:
                group[:, target, :, :length] = group[:, source, :, :length]
            return
        if any(slot in (source, target) for copy in self._copies for slot in copy[:2]):
            self.flush()  # one after the other, as called
        self._copies.append((target, source, length))

    def flush(self) -> None:
        """Launch the copies ``copy_slot`` holds back."""
        if self._copies:
            into, from_, lengths = zip(*self._copies, strict=True)
            self._copies = []
            self._move([into, from_, lengths], swap=False)

    def swap_slots(self, pairs: list[tuple[int, int]], length: int) -> None:
        """Exchange the first ``length`` positions of each pair of slots (pairs are disjoint)."""
        if self.move_slots is not None:
            self.flush()
            self._move([[a for a, _ in pairs], [b for _, b in pairs], [length] * len(pairs)], swap=True)
            return
        if len(pairs) == 1:  # slices: no index to upload
            (a, b), = pairs
            for group in self.groups:
                held = group[:, a, :, :length].clone()
                group[:, a, :, :length] = group[:, b, :, :length]
                group[:, b, :, :length] = held
            return
        for start in range(0, len(pairs), SWAPS_AT_ONCE):
            some = pairs[start : start + SWAPS_AT_ONCE]
            targets = [a for a, _ in some] + [b for _, b in some]
            sources = [b for _, b in some] + [a for a, _ in some]
            for group in self.groups:  # the right side is gathered (copied) before it is written
                into, from_ = (_OPS.tensor(slots, group.device, torch.long) for slots in (targets, sources))
                group[:, into, :, :length] = group[:, from_, :, :length]

    def _move(self, moves: list[Any], swap: bool) -> None:
        """``moves``: into, from and length of each pair, through the kernel."""
        keys, values = self.groups
        assert self.move_slots is not None
        table = _OPS.tensor(moves, keys.device, torch.long)  # one upload
        self.move_slots(keys, values, table, max(moves[2]), swap)
