"""Where a variable being generated stands (``Step``): the mask of its next token and whether it
is done; as the client sends it (``logit_bias``, LMQL's +-100) and as the engine applies it
(``row``). One code for both, so both choose the same tokens."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lmql_core.constraints.mask import Allowed
from lmql_core.constraints.vocabulary import Vocabulary

BAN, ONLY = -100, 100


@dataclass
class Step:
    allowed: Allowed
    stop: bool = False

    @property
    def done(self) -> bool:
        return self.stop or self._census[0] == 0

    @property
    def bans_nothing(self) -> bool:
        """Every token and the end allowed, no stopping phrase reached: its row would ban nothing
        (``len(X) < n`` while every token's text fits)."""
        tokens = self.allowed.tokens
        return not self.stop and self.allowed.eos and (tokens is None or self._census[0] == len(tokens))

    def forced(self) -> int | None:
        count, first = self._census
        return None if self.allowed.eos or count != 1 else first

    @cached_property
    def _census(self) -> tuple[int | None, int | None]:
        """How many tokens the mask allows (None: any) and the one where it allows one, counted
        once a step (``done``, ``forced`` and ``row`` each ask)."""
        tokens = self.allowed.tokens
        return (None, None) if tokens is None else _census(tokens)

    def same_mask(self, other: Step) -> bool:
        a, b = self.allowed, other.allowed
        if a.eos != b.eos or (a.tokens is None) != (b.tokens is None):
            return False
        return a.tokens is None or b.tokens is None or bool(np.array_equal(a.tokens, b.tokens))

    def logit_bias(self, vocab: Vocabulary) -> dict[str, int] | None:
        tokens, eos = self.allowed.tokens, vocab.eos
        if tokens is None:
            return None if self.allowed.eos or eos is None else {str(eos): BAN}
        allowed = tokens.copy()
        if eos is not None:
            allowed[eos] = self.allowed.eos
        count = int(allowed.sum())
        if count < vocab.size - count:
            return {str(i): ONLY for i in np.flatnonzero(allowed)}
        return {str(i): BAN for i in np.flatnonzero(~allowed)}

    def row(self, width: int, eos: int | None) -> np.ndarray:
        """The tokens the engine lets through (``width`` of them), as the client's requests
        would: EOS alone where the variable is done, the forced token alone, else the mask
        with EOS where the variable may end."""
        row = np.zeros(width, dtype=bool)
        forced = None if self.done else self.forced()
        if self.done:
            if eos is not None:
                row[eos] = True
        elif forced is not None:
            row[forced] = True
        else:
            tokens = self.allowed.tokens
            if tokens is None:
                row[:] = True
            else:
                row[:min(width, len(tokens))] = tokens[:width]
            if eos is not None:
                row[eos] = self.allowed.eos
        return row


# a shared (read-only) mask's census, by the array's id while it lives: a variable's masks repeat
# (a count of characters, a regex state), and counting a vocabulary's flags costs µs every token
_CENSUS: dict[int, tuple[weakref.ref[np.ndarray], int, int | None]] = {}


def _census(tokens: np.ndarray) -> tuple[int, int | None]:
    """How many tokens ``tokens`` allows, and the one it allows where it allows one."""
    key = id(tokens)
    known = _CENSUS.get(key)
    if known is not None and known[0]() is tokens:
        return known[1], known[2]
    count = int(np.count_nonzero(tokens))
    first = int(np.flatnonzero(tokens)[0]) if count == 1 else None
    if not tokens.flags.writeable:
        _CENSUS[key] = (weakref.ref(tokens, lambda _: _CENSUS.pop(key, None)), count, first)
    return count, first
