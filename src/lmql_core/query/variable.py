"""A prompt variable being generated: its constraint, where it stands (``Step``: the mask of the
next token, and whether it is done), and how its tokens are drawn (``Sampling``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmql_core.query.constraints import ANY, Allowed, Count, Node, Scope, StopsAt, Value
from lmql_core.query.vocabulary import Vocabulary

CHUNK = 64  # tokens asked for at once when no constraint bounds the variable
BAN, ONLY = -100, 100


@dataclass
class Step:
    allowed: Allowed
    stop: bool = False

    @property
    def done(self) -> bool:
        tokens = self.allowed.tokens
        return self.stop or (tokens is not None and not tokens.any())

    def forced(self) -> int | None:
        tokens = self.allowed.tokens
        if self.allowed.eos or tokens is None or tokens.sum() != 1:
            return None
        return int(np.flatnonzero(tokens)[0])

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


@dataclass
class Variable:
    """One prompt variable being generated: its constraint and where it stands."""

    name: str
    where: Node | None
    scope: Scope
    vocab: Vocabulary
    max_tokens: int | None = None  # the query's own bound (LMQL's max_len), counted with the prompt

    def value(self, ids: list[int]) -> Value:
        text = self.vocab.decode(ids)
        return Value(ids, text, text[len(self.vocab.decode(ids[:-1])):] if ids else "")

    def step(self, ids: list[int]) -> Step:
        value = self.value(ids)
        if self.where is None:
            return Step(ANY)
        allowed = self.where.allowed(self.name, value, self.scope, self.vocab)
        stop = bool(ids) and any(StopsAt.reached(value, s.phrase(self.scope)) for s in self.stops())
        return Step(allowed, stop)

    def stops(self) -> list[StopsAt]:
        return [n for n in self.constraints() if isinstance(n, StopsAt) and n.var == self.name]

    def constraints(self) -> list[Node]:
        return list(self.where.nodes()) if self.where is not None else []

    def token_limit(self, ids: list[int], chunk: int = CHUNK) -> int:
        """How many tokens one request may ask for: the tightest ``len(TOKENS(V)) < n``, else
        ``chunk`` (the decoder's ``chunksize``)."""
        limit = chunk
        for node in self.constraints():
            if isinstance(node, Count) and node.tokens and node.var == self.name:
                bound = self.scope.eval(node.args[0])
                if isinstance(bound, int):
                    limit = min(limit, max(1, bound - len(ids)))
        return limit

    def finish(self, ids: list[int]) -> str:
        """The value's text after STOPS_AT/STOPS_BEFORE trimming."""
        value = self.value(ids)
        text = value.text
        trims = [t for s in self.stops() if (t := s.trim(value, s.phrase(self.scope))) is not None]
        return min(trims, key=len) if trims else text


@dataclass
class Sampling:
    temperature: float = 0.0
    options: dict[str, Any] | None = None  # top_k, top_p, repetition_penalty: forwarded as LMQL does
    chunk: int = CHUNK  # tokens asked for at once when no constraint bounds the variable


OnToken = Callable[[list[int]], Awaitable[None]]
