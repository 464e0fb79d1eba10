"""A tokenizer's vocabulary as constraints need it: each token's text, and masks over all tokens."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from lmql_core.constraints.mask import MaskPending, Value


class Tokenizer(Protocol):
    """What a vocabulary reads of a tokenizer (``loading.tokenizer``'s tokenizers are ones)."""

    vocab_size: int
    eos_token_id: int | None
    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


MASK_CACHE_BYTES = 64 * 2**20  # masks remembered per vocabulary (REGEX states, ``in`` rests, lengths)

# by id of the tokenizer (which the entry keeps alive, so an id is never reused while cached);
# the least recently used go first, so programs over many models do not keep every tokenizer
CACHED_VOCABULARIES = 8
_cache: OrderedDict[int, Vocabulary] = OrderedDict()
_deferring = threading.local()  # ``slow_masks_deferred``: this thread computes no slow mask


@contextmanager
def slow_masks_deferred() -> Iterator[None]:
    """Within: a slow mask not remembered yet raises ``MaskPending`` instead of being computed."""
    before, _deferring.on = getattr(_deferring, "on", False), True
    try:
        yield
    finally:
        _deferring.on = before


class Vocabulary:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.size = int(tokenizer.vocab_size)
        self.eos = tokenizer.eos_token_id
        self.bos = tokenizer.bos_token_id
        self._remembered: OrderedDict[Hashable, Any] = OrderedDict()
        self._remembered_bytes = 0
        self._remembering = threading.Lock()  # the engine's mask thread and a local runtime share it

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> Vocabulary:
        cached = _cache.get(id(tokenizer))
        if cached is None:
            cached = _cache[id(tokenizer)] = cls(tokenizer)
            while len(_cache) > CACHED_VOCABULARIES:
                _cache.popitem(last=False)
        _cache.move_to_end(id(tokenizer))
        return cached

    PREPARED = ("texts", "lengths", "longest", "by_first_char")  # what every mask reads of the tokens

    def prepare(self) -> None:
        """Compute now what every mask reads of the tokens (their texts, lengths, first characters)."""
        for name in self.PREPARED:
            getattr(self, name)

    @property
    def prepared(self) -> bool:
        """Whether ``prepare`` has nothing left to do (cached properties live in the instance's dict)."""
        return all(name in self.__dict__ for name in self.PREPARED)

    @cached_property
    def texts(self) -> list[str]:
        """Each token's text on its own (special tokens included, as the tokenizer writes them)."""
        return [self.tokenizer.decode([i]) for i in range(self.size)]

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.texts], dtype=np.int64)

    @cached_property
    def by_first_char(self) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, list[str]]]]:
        """The tokens whose text is empty, and the others grouped by their first character
        (ids, texts), in id order."""
        groups: dict[str, list[int]] = {}
        empty = []
        for i, text in enumerate(self.texts):
            if text:
                groups.setdefault(text[0], []).append(i)
            else:
                empty.append(i)
        grouped = {char: (np.array(ids, dtype=np.int64), [self.texts[i] for i in ids])
                   for char, ids in groups.items()}
        return np.array(empty, dtype=np.int64), grouped

    def remember(self, key: Hashable, compute: Callable[[], Any], slow: bool = False) -> Any:
        """``compute()``'s result under ``key``, computed once while it stays among the most
        recently used (``MASK_CACHE_BYTES`` of numpy arrays in all); its arrays are made
        read-only (shared by every step and row that asks). ``slow``: a computation of
        milliseconds, which a thread in ``slow_masks_deferred`` leaves to another (``MaskPending``)."""
        with self._remembering:
            found = self._remembered.get(key)
            if found is not None:
                self._remembered.move_to_end(key)
                return found
        if slow and getattr(_deferring, "on", False):
            raise MaskPending(key)
        found = compute()
        _freeze(found)
        with self._remembering:
            if key not in self._remembered:
                self._remembered[key] = found
                self._remembered_bytes += _size(found)
            while self._remembered_bytes > MASK_CACHE_BYTES and len(self._remembered) > 1:
                self._remembered_bytes -= _size(self._remembered.popitem(last=False)[1])
        return found

    @cached_property
    def longest(self) -> int:
        """The most characters of a token's text."""
        return int(self.lengths.max(initial=0))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def prompt_after(self, before: list[int], ids: list[int], text: str, prompt_text: str,
                     following: str) -> list[int]:
        """The prompt's tokens after a variable (LMQL 0.7's rule; the query runtime and the server's
        templates both follow it): ``before``, then the variable's own ``ids`` where its prompt text
        is its ``text`` and no text follows, else its prompt text and the ``following`` text, each
        tokenized on its own."""
        if following == "" and prompt_text == text:
            return before + ids
        return before + self.encode(prompt_text) + self.encode(following)

    def value(self, ids: list[int], before: str | Value | None = None) -> Value:
        """A variable's tokens so far as its constraints read them, decoded when one reads its text
        (``ids`` must not change meanwhile); ``before``: the text (or the ``Value``) of all but the
        last of them, where the caller knows it."""
        return Value(ids, decode=self.decode, before=before, texts=self.__dict__.get("texts"))

    def none(self) -> np.ndarray:
        """No token allowed, in an array of one's own (to fill)."""
        return np.zeros(self.size, dtype=bool)

    def nothing(self) -> np.ndarray:
        """No token allowed, shared (read-only)."""
        return self.remember(("nothing",), self.none)

    # the masks below are remembered (``remember``) and shared: not to be changed
    def matching(self, pattern: str) -> np.ndarray:
        """Tokens whose text matches ``pattern`` from its start (``re.match``), EOS never."""
        def compute() -> np.ndarray:
            compiled = re.compile(pattern)
            matches = [compiled.match(t) is not None for t in self.texts]
            return self._without_eos(np.array(matches, dtype=bool))

        return self.remember(("matching", pattern), compute, slow=True)

    def containing(self, text: str) -> np.ndarray:
        """Tokens whose text holds ``text`` (EOS never)."""
        return self.remember(("containing", text),
                             lambda: self._without_eos(np.array([text in t for t in self.texts], dtype=bool)),
                             slow=True)

    def not_containing(self, text: str) -> np.ndarray:
        """Tokens whose text does not hold ``text`` (EOS too)."""
        return self.remember(("not containing", text), lambda: ~self.containing(text))

    def first_tokens(self, texts: list[str]) -> np.ndarray:
        """The first token of each text's own tokenization."""
        def compute() -> np.ndarray:
            mask = self.none()
            for text in texts:
                ids = self.encode(text)
                if ids:
                    mask[ids[0]] = True
            return mask

        return self.remember(("first tokens", tuple(texts)), compute)

    def at_most_chars(self, chars: int) -> np.ndarray:
        """Tokens of at most ``chars`` characters."""
        bound = max(-1, min(chars, self.longest))  # beyond these: the same masks
        return self.remember(("chars", bound), lambda: self.lengths <= bound)

    def _without_eos(self, mask: np.ndarray) -> np.ndarray:
        if self.eos is not None:
            mask[self.eos] = False
        return mask


def _freeze(value: Any) -> None:
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, tuple):
        for part in value:
            _freeze(part)


def _size(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple):
        return sum(_size(v) for v in value) + 64
    return 64
