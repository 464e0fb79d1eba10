"""REGEX masks over a whole vocabulary, as ``Regex.mask`` defines them (a token is allowed where
``pattern.fullmatch(text + token, partial=True)`` matches, EOS never) but without a match per
token at every step:

- tokens are grouped by their first character, and a group whose first character already ends
  every partial match is skipped with one match (a prefix that cannot lead to a match has no
  extension that can, so skipping is exact);
- the result is remembered by the vocabulary under the text's automaton state, as the classes of
  its positions to the depth of the longest token (``regex_states``; where the pattern has none,
  under the text itself), so every text with the same continuations (all the dates after
  "2024-0", "1999-1", ...; every count of ``[a-z]{1,300}`` far from 300) shares one computation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from lmql_core.constraints.regex_states import Unsupported, automaton
from lmql_core.constraints.vocabulary import Vocabulary


class TextStates:
    """The automaton state of one variable's text as it grows (each step reads only what the
    last token added); the key its masks are remembered under."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._machine = automaton(pattern)
        self._text = ""
        self._state: frozenset[int] = frozenset()
        if self._machine is not None and self._machine.usable:
            with contextlib.suppress(Unsupported):  # then ``usable`` is False: texts are the keys
                self._state = self._machine.start()

    def key(self, text: str, vocab: Vocabulary) -> tuple[Any, ...]:
        """The state's classes (``Automaton.future_classes``) to the depth of ``vocab``'s longest
        token: states that differ only beyond it (``[a-z]{1,300}`` far from 300) share a mask."""
        machine = self._machine
        if machine is None or not machine.usable:
            return ("regex", self.pattern, "text", text)
        depth = vocab.longest
        try:
            if not text.startswith(self._text):
                self._text, self._state = "", machine.start()
            self._state = machine.advance(self._state, text[len(self._text):])
            self._text = text  # (before the classes, which may be left to another thread: MaskPending)
            classes = vocab.remember(("regex classes", self.pattern, depth),
                                     lambda: machine.future_classes(depth), slow=True)
        except Unsupported:
            return ("regex", self.pattern, "text", text)
        return ("regex", self.pattern, "classes", depth, frozenset(classes[n] for n in self._state))


def regex_mask(compiled: Any, text: str, vocab: Vocabulary, states: TextStates) -> tuple[np.ndarray, bool]:
    """The tokens that keep ``text`` a partial match of ``compiled`` and whether it is a full one
    (the array is shared: not to be changed)."""
    result: tuple[np.ndarray, bool] = vocab.remember(states.key(text, vocab),
                                                     lambda: _compute(compiled, text, vocab), slow=True)
    return result


def _compute(compiled: Any, text: str, vocab: Vocabulary) -> tuple[np.ndarray, bool]:
    mask = vocab.none()
    if compiled.fullmatch(text, partial=True) is not None:
        empty, groups = vocab.by_first_char
        mask[empty] = True
        for char, (ids, texts) in groups.items():
            if compiled.fullmatch(text + char, partial=True) is not None:
                mask[ids] = [len(t) == 1 or compiled.fullmatch(text + t, partial=True) is not None
                             for t in texts]
    if vocab.eos is not None:
        mask[vocab.eos] = False
    return mask, compiled.fullmatch(text) is not None
