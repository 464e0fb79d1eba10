"""A prompt variable being generated: its constraint, where it stands (``Step``: the mask of the
next token, and whether it is done), and how its tokens are drawn (``Sampling``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lmql_core.constraints.kinds import ANY, Rule, Value
from lmql_core.constraints.step import Step
from lmql_core.constraints.vocabulary import Vocabulary
from lmql_core.query.constraints import Node, Scope

CHUNK = 64  # tokens asked for at once when no constraint bounds the variable

__all__ = ["CHUNK", "OnToken", "Sampling", "Step", "Variable"]


@dataclass
class Variable:
    """One prompt variable being generated: its constraint and where it stands."""

    name: str
    where: Node | None
    scope: Scope
    vocab: Vocabulary
    max_tokens: int | None = None  # the query's own bound (LMQL's max_len), counted with the prompt

    def value(self, ids: list[int]) -> Value:
        return self.vocab.value(ids)

    @cached_property
    def rule(self) -> Rule | None:
        """The where clause as it stands while this variable is generated (arguments evaluated)."""
        return None if self.where is None else self.where.resolve(self.name, self.scope, self.vocab)

    def step(self, ids: list[int]) -> Step:
        rule = self.rule
        if rule is None:
            return Step(ANY)
        return rule.step(self.value(ids), self.vocab)

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
