"""What a constraint answers at each step (``Allowed``), about what (``Value``), and its errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lmql_core.errors import LMQLError


class ConstraintError(LMQLError):
    """A constraint whose arguments cannot constrain a variable (the message names the argument)."""


class NoDigits(ConstraintError, ValueError):
    """INT's value ended without a digit."""


class MaskPending(Exception):  # noqa: N818 (not an error: a mask to compute elsewhere first)
    """A mask costly to compute (milliseconds: a REGEX state's first) that the thread asking
    leaves to another (``vocabulary.slow_masks_deferred``): the engine thread, which every
    stream waits for."""


@dataclass
class Allowed:
    """The next tokens allowed (``None``: any) and whether the variable may end now."""

    tokens: np.ndarray | None
    eos: bool

    def __and__(self, other: Allowed) -> Allowed:
        if self.tokens is None:
            tokens = other.tokens
        elif other.tokens is None:
            tokens = self.tokens
        else:
            tokens = self.tokens & other.tokens
        return Allowed(tokens, self.eos and other.eos)

    def __or__(self, other: Allowed) -> Allowed:
        tokens = None if self.tokens is None or other.tokens is None else self.tokens | other.tokens
        return Allowed(tokens, self.eos or other.eos)


ANY = Allowed(None, True)
REPLACEMENT = "\ufffd"  # what a decoder gives for bytes that are not (yet) a whole character
GROWN_AFTER = 16  # tokens: a shorter value decodes whole as fast as two decodes of one or two tokens


class Value:
    """The variable being generated: its tokens and text so far, and the text the last token
    added. Given ``decode`` instead of ``text``, the text is decoded when a constraint first
    reads it (``len(TOKENS(X))`` alone never does), and ``diff`` from ``before``: the text of
    all but the last token, or the ``Value`` of those tokens (decoded when needed). Where
    ``before`` is a ``Value`` whose text was read, the text of more than ``GROWN_AFTER`` tokens
    is its text and what the last token adds after the one before it (two short decodes, not one
    of every token: a value read at every token would cost quadratic time), unless a character
    may be split across tokens there (U+FFFD on either side) or the decoder's text of the two
    tokens does not extend that of the first."""

    __slots__ = ("ids", "_text", "_diff", "_decode", "_before", "_texts")

    def __init__(self, ids: list[int], text: str | None = None, diff: str | None = None,
                 decode: Callable[[list[int]], str] | None = None, before: str | Value | None = None,
                 texts: list[str] | None = None) -> None:
        """``texts``: each token's ``decode([id])``, where known (one decode fewer a token)."""
        assert text is not None or decode is not None, "a Value needs its text or a way to decode it"
        self.ids = ids
        self._text, self._diff, self._decode, self._before = text, diff, decode, before
        self._texts = texts

    @property
    def text(self) -> str:
        if self._text is None:
            assert self._decode is not None
            extended = self._extended(self._decode)
            self._text = self._decode(self.ids) if extended is None else extended
        return self._text

    def _extended(self, decode: Callable[[list[int]], str]) -> str | None:
        """The text as ``before``'s and what the last token adds, where that is certain."""
        before = self._before
        if len(self.ids) <= GROWN_AFTER or not isinstance(before, Value) or before._text is None \
                or len(before.ids) != len(self.ids) - 1 or before._text.endswith(REPLACEMENT):
            return None
        pair = decode(self.ids[-2:])
        texts, second_last = self._texts, self.ids[-2]
        if texts is not None and 0 <= second_last < len(texts):
            first = texts[second_last]
        else:
            first = decode([second_last])
        if REPLACEMENT in pair or not pair.startswith(first):
            return None
        self._diff = pair[len(first):]
        return before._text + self._diff

    @property
    def diff(self) -> str:
        if self._diff is None:
            self._diff = self.text[len(self._text_before()):] if self.ids else ""
        return self._diff

    def drop_before(self) -> None:
        """Lets the value before this one go (a next value links to this one; a chain of them would
        hold every earlier copy of the tokens): ``diff`` is then decoded, where read again."""
        if isinstance(self._before, Value):
            self._before = None

    def _text_before(self) -> str:
        before = self._before
        if isinstance(before, Value):
            return before.text
        if before is not None:
            return before
        assert self._decode is not None
        return self._decode(self.ids[:-1])

    def __repr__(self) -> str:
        return f"Value(ids={self.ids!r}, text={self.text!r}, diff={self.diff!r})"
