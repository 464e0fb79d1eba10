"""Which sequence lives in which cache slot, and which finished prompts are kept for reuse.

Running sequences occupy slots 0..n-1 (compact, so a decode step reads one contiguous range).
A finished sequence's slot is kept, with the tokens it holds, as a cached prefix: a new request
whose prompt starts with those tokens (LMQL sends growing prompts again and again) takes the
slot over and only computes the rest. The last slot is scratch for padding rows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from lmql_hf.cache.slot_cache import SlotCache

PENDING = -1  # a token whose value the host does not know yet
NO_TOKEN = -2  # the first token of an empty slot, in SlotTable's index


@dataclass
class Slot:
    tokens: list[int] = field(default_factory=list)  # whose keys/values the slot holds, from 0
    seq_id: int | None = None  # None: a cached prefix (or empty)
    last_used: int = 0


class SlotTable:
    def __init__(self, cache: SlotCache, reuse_prefixes: bool = True) -> None:
        self.cache = cache
        self.reuse_prefixes = reuse_prefixes
        self.scratch = cache.slots - 1
        self.slots = [Slot() for _ in range(self.scratch)]
        self.slot_of: dict[int, int] = {}
        self.pending: dict[int, int] = {}  # seq_id -> index of its token not yet confirmed
        self._clock = itertools.count()
        self.reused_tokens = 0  # prompt tokens not recomputed thanks to cached prefixes
        # Each slot's first token and age (last use; -1 empty), kept by ``_index`` wherever a
        # slot at or above the running ones changes (a running slot's at its release): every
        # admission searches the slots above the running ones in numpy (a Python walk over 512
        # slots cost ~0.1 ms per prompt).
        self._firsts = np.full(self.capacity, NO_TOKEN, dtype=np.int64)
        self._ages = np.full(self.capacity, -1, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return len(self.slots)

    @property
    def active(self) -> int:
        return len(self.slot_of)

    def admit(self, seq_id: int, prompt: list[int], reuse: bool = True) -> tuple[int, int]:
        """Give ``seq_id`` the next slot; returns (slot, tokens already cached from the prompt)."""
        target = self.active
        if target >= self.capacity:
            raise RuntimeError(f"all {self.capacity} cache slots are in use")
        source, kept = self._best_prefix(prompt) if reuse and self.reuse_prefixes else (target, 0)
        if source != target:
            self._swap([(source, target)])
        elif kept == 0:
            self._make_room(target)
        slot = self.slots[target]
        slot.tokens = slot.tokens[:kept]
        slot.seq_id, slot.last_used = seq_id, next(self._clock)
        self.slot_of[seq_id] = target
        self.reused_tokens += kept
        return target, kept

    def _best_prefix(self, prompt: list[int]) -> tuple[int, int]:
        best, best_len = self.active, 0
        if not prompt:
            return best, 0
        # most cached prompts differ at once: only those starting alike are walked
        for index in np.flatnonzero(self._firsts[self.active :] == prompt[0]) + self.active:
            n = _common_prefix(self.slots[index].tokens, prompt)
            if n > best_len:
                best, best_len = int(index), n
        # leave at least one token to compute: its logits are the answer
        return best, min(best_len, len(prompt) - 1)

    def _make_room(self, target: int) -> None:
        """Move a cached prefix out of ``target`` into the emptiest, least recently used slot."""
        if not self.slots[target].tokens:
            return
        # empty slots first (an age of -1), then the least recently used (the clock counts from 0)
        if target + 1 < self.capacity:
            victim = target + 1 + int(np.argmin(self._ages[target + 1 :]))
            self.cache.copy_slot(target, victim, len(self.slots[target].tokens))
            self.slots[victim] = self.slots[target]
            self._index(victim)
        self.slots[target] = Slot()

    def append(self, seq_id: int, tokens: list[int]) -> None:
        self.slots[self.slot_of[seq_id]].tokens.extend(tokens)

    def append_pending(self, seq_ids: list[int]) -> None:
        """A token for each sequence, computed from the device, whose value the host learns
        later (``confirm``); until then it matches no prompt. (Once per decode step: lean.)"""
        slots, slot_of, pending = self.slots, self.slot_of, self.pending
        for seq_id in seq_ids:
            tokens = slots[slot_of[seq_id]].tokens
            pending[seq_id] = len(tokens)
            tokens.append(PENDING)

    def confirm(self, seq_ids: list[int], tokens: list[int]) -> None:
        slots, slot_of, pending = self.slots, self.slot_of, self.pending
        for seq_id, token in zip(seq_ids, tokens, strict=True):
            index = pending.pop(seq_id, None)
            if index is not None and seq_id in slot_of:
                slots[slot_of[seq_id]].tokens[index] = token

    def lengths(self, slots: list[int]) -> list[int]:
        return [len(self.slots[slot].tokens) for slot in slots]

    def release(self, seq_ids: list[int]) -> None:
        """Keep the finished sequences' tokens as cached prefixes and the running slots compact:
        running sequences above the new boundary move down into the freed slots, in one exchange
        (none when the highest ones ended too, as when a batch of equal requests ends)."""
        freed = []
        for seq_id in seq_ids:
            index = self.slot_of.pop(seq_id, None)
            self.pending.pop(seq_id, None)
            if index is None:
                continue
            slot = self.slots[index]
            slot.seq_id = None
            if not self.reuse_prefixes:
                slot.tokens = []
            freed.append(index)
            self._index(index)  # its tokens were appended while it ran
        active = self.active
        holes = sorted(i for i in freed if i < active)
        movers = [i for i in range(active, active + len(freed)) if self.slots[i].seq_id is not None]
        if holes:
            self._swap(list(zip(holes, movers, strict=True)))

    def take_over(self, seq_id: int, new_id: int, tokens: list[int]) -> int | None:
        """``new_id`` goes on in ``seq_id``'s slot (``backend.TakesOver``): its tokens kept up to
        where they differ from ``tokens`` (a token still pending differs from any), at most all
        but the last of ``tokens``; returns how many. None: ``seq_id`` has no slot."""
        index = self.slot_of.pop(seq_id, None)
        self.pending.pop(seq_id, None)
        if index is None:
            return None
        slot = self.slots[index]
        kept = max(0, min(_common_prefix(slot.tokens, tokens), len(tokens) - 1))
        del slot.tokens[kept:]
        slot.seq_id, slot.last_used = new_id, next(self._clock)
        self.slot_of[new_id] = index
        self.reused_tokens += kept
        return kept

    def _swap(self, pairs: list[tuple[int, int]]) -> None:
        length = max(len(self.slots[i].tokens) for pair in pairs for i in pair)
        if length:
            self.cache.swap_slots(pairs, length)
        for a, b in pairs:
            self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
            self._index(a, b)
            for index in (a, b):
                seq_id = self.slots[index].seq_id
                if seq_id is not None:
                    self.slot_of[seq_id] = index

    def forget_prefixes(self) -> None:
        """Drop every cached prefix (the slots of running sequences stay)."""
        for slot in self.slots:
            if slot.seq_id is None:
                slot.tokens = []
        self._index(*range(self.capacity))

    def _index(self, *indices: int) -> None:
        for index in indices:
            tokens = self.slots[index].tokens
            self._firsts[index] = tokens[0] if tokens else NO_TOKEN
            self._ages[index] = self.slots[index].last_used if tokens else -1

    def length(self, seq_id: int) -> int:
        return len(self.slots[self.slot_of[seq_id]].tokens)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
