"""``beam(n)``: the n most likely runs of the whole program, as LMQL 0.7.3's ``beam_search``.

A hypothesis is the values decided so far, the whole token sequence (the prompt's tokens without
BOS, scored 0, then every later token with its log-probability) and where the program stands.
To reach its next variable, the program is replayed from the start with the decided values
(prompt programs are deterministic given their variables; side effects in them repeat).

Each step extends every open hypothesis by one token: its n most likely next tokens under the
variable's mask (a token the mask forces, 0), or the next of the prompt's tokens pending after a
variable. When a variable ends, its end-of-sequence token is dropped and the prompt text up to
the next variable (or to the end, then EOS) is scored: its first token joins at once, the rest
one per step. Active and finished hypotheses keep the n best each by sum / length ** 0.7;
the search stops when no active one can beat the finished ones, which come sorted by their sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lmql_core.api.llm import LLM
from lmql_core.query.decision import Decided, RunContext
from lmql_core.query.decoders import DecoderSpec, finished
from lmql_core.query.errors import QueryError
from lmql_core.query.result import LMQLResult
from lmql_core.query.runtime import Program
from lmql_core.query.variable import Variable
from lmql_core.query.vocabulary import Vocabulary

ALPHA = 0.7  # LMQL's alpha_length_normalized, its default beam scorer


class Suspended(BaseException):  # noqa: N818 (not an error: a replay reached an undecided variable)
    def __init__(self, name: str, prompt_ids: list[int], variable: Variable) -> None:
        self.name, self.prompt_ids, self.variable = name, prompt_ids, variable


@dataclass
class Hypothesis:
    decided: list[Decided]
    tokens: list[int]  # the whole sequence, BOS left out (as LMQL's sequences)
    logprobs: list[float]  # one per token
    at: Suspended | None = None  # the variable in progress; None: the program finished
    start: int = 0  # where the variable in progress begins in ``tokens``
    pending: list[tuple[int, float]] = field(default_factory=list)  # scored prompt tokens still to join
    result: Any = None
    det: list[bool] = field(default_factory=list)  # per token: prompt text (True) or generated (False)
    rewritten_now: bool = False  # the step that made it ended a variable (LMQL: a deterministic sequence)
    parent: int = 0  # id() of the hypothesis it grew from in this step

    @property
    def done(self) -> bool:
        return self.at is None and not self.pending

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def normalized(self) -> float:
        return self.total / len(self.tokens) ** ALPHA if self.tokens else 0.0

    def grown(self, token: int, logprob: float, det: bool = False) -> Hypothesis:
        return replace(self, tokens=[*self.tokens, token], logprobs=[*self.logprobs, logprob],
                       det=[*self.det, det], rewritten_now=False)


class BeamSearch:
    def __init__(self, query: Any, fn: Any, program: Program, model: LLM, vocab: Vocabulary,
                 spec: DecoderSpec, args: tuple[Any, ...], inputs: dict[str, Any]) -> None:
        self.query, self.fn, self.program, self.model, self.vocab = query, fn, program, model, vocab
        self.spec, self.args, self.inputs = spec, args, inputs
        self.bos = [vocab.bos] if vocab.bos is not None else []
        if vocab.eos is None:
            raise QueryError("beam search needs a model whose tokenizer has an end-of-sequence token")
        self.eos: int = vocab.eos

    async def run(self) -> list[Any]:
        first = await self.replay([], [], [], forced=False)
        if first.done:
            return [first.result]  # as LMQL: a program with no variable to decode, one result
        active: list[Hypothesis] = [first]
        done: list[Hypothesis] = []
        while active:
            grown = [h for hypothesis in active for h in await self.expand(hypothesis)]
            pool = grown + done
            active = best([h for h in pool if not h.done], self.spec.n)
            done = best([h for h in pool if h.done], self.spec.n)
            if active and len(done) == self.spec.n and \
                    max(h.normalized for h in active) < min(h.normalized for h in done):
                break
        return [h.result for h in sorted(done, key=lambda h: -h.total)]

    async def expand(self, hypothesis: Hypothesis) -> list[Hypothesis]:
        if hypothesis.pending:
            (token, logprob), *rest = hypothesis.pending
            return [replace(hypothesis.grown(token, logprob, det=True), pending=rest)]
        assert hypothesis.at is not None
        at, ids = hypothesis.at, hypothesis.tokens[hypothesis.start:]
        step = at.variable.step(ids)
        if step.done or len(at.prompt_ids) + len(ids) >= self.spec.max_length:
            return [await self.end(hypothesis, forced=True)]
        forced = step.forced()
        if forced is not None:
            return [hypothesis.grown(forced, 0.0)]
        tops = await self.model.next_token_logprobs(at.prompt_ids + ids, self.spec.n,
                                                    step.logit_bias(at.variable.vocab), **self.spec.options)
        grown = []
        for token, logprob in sorted(tops.items(), key=lambda item: -item[1])[:self.spec.n]:
            if token == self.vocab.eos:
                if step.allowed.eos:
                    grown.append(await self.end(hypothesis, forced=False))
            elif _allows(step.allowed.tokens, token):
                grown.append(hypothesis.grown(token, logprob))
        return grown

    async def end(self, hypothesis: Hypothesis, forced: bool) -> Hypothesis:
        """The variable in progress ends, ``forced`` by its constraints (its mask leaves only
        EOS) or by the model's EOS: the program goes on."""
        at = hypothesis.at
        assert at is not None
        decided = [*hypothesis.decided, finished(at.name, hypothesis.tokens[hypothesis.start:], at.variable)]
        return await self.replay(decided, hypothesis.tokens, hypothesis.logprobs, forced, hypothesis.det)

    async def replay(self, decided: list[Decided], tokens: list[int], logprobs: list[float],
                     forced: bool, det: list[bool] | None = None) -> Hypothesis:
        """The program run again with ``decided``, up to its next variable or its end; the tokens
        that follow ``tokens`` are scored (LMQL's rewrite, which drops the EOS that ended the
        variable). A forced end with nothing after it keeps its EOS at 0 (LMQL's single-token
        masks score 0)."""
        det = det or []
        ctx = self.query.context(self.program, self.model, self.vocab, _replay(decided))
        try:
            returned = await self.query.call(self.fn, ctx, self.args, self.inputs)
        except Suspended as at:
            following = at.prompt_ids[len(self.bos):]
            if not tokens:  # the first prompt: all there, scored 0
                return Hypothesis(decided, following, [0.0] * len(following), at, len(following),
                                  det=[True] * len(following))
            hypothesis = await self.rewritten(decided, tokens, logprobs, det, following)
            return replace(hypothesis, at=at, start=len(following))
        result = returned if returned is not None else LMQLResult(ctx.prompt_text, dict(ctx.variables))
        if not tokens:
            return Hypothesis(decided, [], [], result=result)
        following = ctx.prompt_ids()[len(self.bos):]
        if following == tokens and forced:
            return Hypothesis(decided, [*tokens, self.eos], [*logprobs, 0.0], result=result,
                              det=[*det, False])
        hypothesis = await self.rewritten(decided, tokens, logprobs, det, [*following, self.eos])
        return replace(hypothesis, result=result)

    async def rewritten(self, decided: list[Decided], tokens: list[int], logprobs: list[float],
                        det: list[bool], following: list[int]) -> Hypothesis:
        """The sequence ``following``: what it shares with ``tokens`` keeps its log-probabilities,
        the rest is scored; its first new token joins now, the others are pending."""
        common = _common_prefix(tokens, following)
        kept, new = following[:common], following[common:]
        scores = await self.model.score_tokens(self.bos + kept, new) if new else []
        hypothesis = Hypothesis(decided, kept, list(logprobs[:common]), det=list(det[:common]))
        if not new:
            return replace(hypothesis, rewritten_now=True)
        pending = list(zip(new[1:], scores[1:], strict=True))
        return replace(hypothesis.grown(new[0], scores[0], det=True), pending=pending, rewritten_now=True)


def best(hypotheses: list[Hypothesis], n: int) -> list[Hypothesis]:
    return sorted(hypotheses, key=lambda h: -h.normalized)[:n]


def _common_prefix(a: list[int], b: list[int]) -> int:
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return common


def _allows(tokens: np.ndarray | None, token: int) -> bool:
    return tokens is None or (0 <= token < len(tokens) and bool(tokens[token]))


def _replay(decided: list[Decided]) -> Any:
    values = iter(decided)

    async def decide(ctx: RunContext, name: str, prompt_ids: list[int], variable: Variable) -> Decided:
        value = next(values, None)
        if value is None:
            raise Suspended(name, prompt_ids, variable)
        return value

    return decide
