"""Decoders: how holes get their values. ``argmax`` and ``sample`` generate each variable as the
program reaches it; ``beam`` keeps the n best runs, replaying the program for each (see ``beam``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lmql_core.query.errors import QueryError
from lmql_core.query.generation import Sampling, Variable, generate
from lmql_core.query.runtime import Decide, Decided, QueryContext, postprocess

DEFAULT_MAX_LENGTH = 2048  # LMQL's default max_len: prompt and generated tokens together


@dataclass
class DecoderSpec:
    name: str = "argmax"
    n: int = 1
    temperature: float | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    options: dict[str, Any] = field(default_factory=dict)  # top_k, top_p, repetition_penalty

    FORWARDED = ("top_k", "top_p", "repetition_penalty")
    KNOWN = ("n", "temperature", "max_len", "max_length", *FORWARDED)

    @classmethod
    def build(cls, name: str, kwargs: dict[str, Any]) -> DecoderSpec:
        unknown = sorted(set(kwargs) - set(cls.KNOWN))
        if unknown:
            raise QueryError(f"unknown decoder argument(s) {', '.join(unknown)} for {name}; "
                             f"known: {', '.join(cls.KNOWN)}")
        n = kwargs.get("n", 1)
        if not isinstance(n, int) or n < 1:
            raise QueryError(f"{name}(n=...) must be a positive integer, not {n!r}")
        temperature = kwargs.get("temperature")
        if name == "argmax" and temperature not in (None, 0, 0.0):
            name = "sample"  # as LMQL: a temperature makes argmax sample
        max_length = int(kwargs.get("max_len", kwargs.get("max_length", DEFAULT_MAX_LENGTH)))
        return cls(name, n, temperature, max_length,
                   {k: kwargs[k] for k in cls.FORWARDED if k in kwargs})

    @property
    def sampling(self) -> Sampling:
        if self.name == "sample":
            temperature = 1.0 if self.temperature is None else float(self.temperature)
        else:
            temperature = 0.0
        return Sampling(temperature, self.options)


def direct(spec: DecoderSpec) -> Decide:
    """Generate each variable when the program reaches it."""
    sampling = spec.sampling

    async def decide(ctx: QueryContext, name: str, prompt_ids: list[int], variable: Variable) -> Decided:
        ids = await generate(ctx.model, prompt_ids, variable, sampling, spec.max_length)
        return finished(name, ids, variable)

    return decide


def finished(name: str, ids: list[int], variable: Variable) -> Decided:
    prompt_text, value = postprocess(variable.where, name, variable.finish(ids))
    return Decided(ids, variable.vocab.decode(ids), prompt_text, value)


def log_softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - total for s in scores]
