"""A prompt variable being generated: its constraint, where it stands (``Step``: the mask of the
next token, and whether it is done), and how its tokens are drawn (``Sampling``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from lmql_core.constraints.kinds import ANY, Allowed, Rule, Value
from lmql_core.constraints.vocabulary import Vocabulary
from lmql_core.query.constraints import Node, Scope

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

    @cached_property
    def rule(self) -> Rule | None:
        """The where clause as it stands while this variable is generated (arguments evaluated)."""
        return None if self.where is None else self.where.resolve(self.name, self.scope, self.vocab)

    def step(self, ids: list[int]) -> Step:
        rule = self.rule
        if rule is None:
            return Step(ANY)
        value = self.value(ids)
        return Step(rule.mask(value, self.vocab), bool(ids) and rule.reached(value))

    def token_limit(self, ids: list[int], chunk: int = CHUNK) -> int:
        """How many tokens one request may ask for: the tightest ``len(TOKENS(V)) < n``, else
        ``chunk`` (the decoder's ``chunksize``)."""
        return chunk if self.rule is None else self.rule.token_budget(len(ids), chunk)

    def cut(self, ids: list[int]) -> str | None:
        """The value's text cut by STOPS_AT/STOPS_BEFORE, None where no phrase cuts it."""
        return None if self.rule is None else self.rule.trim(self.value(ids))

    def finish(self, ids: list[int]) -> str:
        """The value's text after STOPS_AT/STOPS_BEFORE trimming."""
        cut = self.cut(ids)
        return self.value(ids).text if cut is None else cut


@dataclass
class Sampling:
    temperature: float = 0.0
    options: dict[str, Any] | None = None  # top_k, top_p, repetition_penalty: forwarded as LMQL does
    chunk: int = CHUNK  # tokens asked for at once when no constraint bounds the variable


OnToken = Callable[[list[int]], Awaitable[None]]
