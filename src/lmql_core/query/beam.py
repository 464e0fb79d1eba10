"""``beam(n)``: the n most likely runs of the whole program.

A hypothesis is the values decided so far plus the tokens of the variable in progress. To reach
its next variable, the program is replayed from the start with the decided values (prompt
programs are deterministic given their variables; side effects in them repeat). Each step asks
the top-n next tokens of every open hypothesis under its mask and keeps the n best of all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmql_core.api.llm import LLM
from lmql_core.query.decoders import DecoderSpec, finished
from lmql_core.query.generation import Variable
from lmql_core.query.result import LMQLResult
from lmql_core.query.runtime import Decided, Program, QueryContext
from lmql_core.query.vocabulary import Vocabulary


class Suspended(BaseException):  # noqa: N818 (not an error: a replay reached an undecided variable)
    def __init__(self, name: str, prompt_ids: list[int], variable: Variable) -> None:
        self.name, self.prompt_ids, self.variable = name, prompt_ids, variable


@dataclass
class Hypothesis:
    decided: list[Decided]
    score: float = 0.0
    ids: list[int] = field(default_factory=list)  # of the variable in progress
    at: Suspended | None = None  # where the replay stopped; None: the program finished
    result: Any = None


async def beam_search(query: Any, fn: Any, program: Program, model: LLM, vocab: Vocabulary,
                      spec: DecoderSpec, args: tuple[Any, ...], inputs: dict[str, Any]) -> list[Any]:
    async def advance(decided: list[Decided], score: float) -> Hypothesis:
        ctx = query.context(program, model, vocab, _replay(decided))
        try:
            returned = await query.call(fn, ctx, args, inputs)
        except Suspended as at:
            return Hypothesis(decided, score, at=at)
        result = returned if returned is not None else LMQLResult(ctx.final_prompt, dict(ctx.variables))
        return Hypothesis(decided, score, result=result)

    beams = [await advance([], 0.0)]
    while any(b.at is not None for b in beams):
        candidates: list[Hypothesis] = [b for b in beams if b.at is None]
        for beam in (b for b in beams if b.at is not None):
            candidates += await _expand(beam, model, spec, advance)
        candidates.sort(key=lambda h: h.score, reverse=True)
        beams = candidates[:spec.n]
    return [b.result for b in beams]


async def _expand(beam: Hypothesis, model: LLM, spec: DecoderSpec, advance: Any) -> list[Hypothesis]:
    assert beam.at is not None
    variable, prompt_ids = beam.at.variable, beam.at.prompt_ids
    step = variable.step(beam.ids)

    async def end(score: float) -> Hypothesis:
        return await advance([*beam.decided, finished(beam.at.name, beam.ids, variable)], score)  # type: ignore[union-attr]

    if step.done or len(prompt_ids) + len(beam.ids) >= spec.max_length:
        return [await end(beam.score)]
    forced = step.forced()
    if forced is not None:
        return [Hypothesis(beam.decided, beam.score, [*beam.ids, forced], beam.at)]
    tops = await model.next_token_logprobs(prompt_ids + beam.ids, spec.n, step.logit_bias(variable.vocab),
                                           **spec.options)
    grown = []
    for token, logprob in sorted(tops.items(), key=lambda item: -item[1])[:spec.n]:
        if token == variable.vocab.eos:
            if step.allowed.eos:
                grown.append(await end(beam.score + logprob))
        elif _allows(step.allowed.tokens, token):
            grown.append(Hypothesis(beam.decided, beam.score + logprob, [*beam.ids, token], beam.at))
    return grown


def _allows(tokens: np.ndarray | None, token: int) -> bool:
    return tokens is None or (0 <= token < len(tokens) and bool(tokens[token]))


def _replay(decided: list[Decided]) -> Any:
    values = iter(decided)

    async def decide(ctx: QueryContext, name: str, prompt_ids: list[int], variable: Variable) -> Decided:
        value = next(values, None)
        if value is None:
            raise Suspended(name, prompt_ids, variable)
        return value

    return decide
