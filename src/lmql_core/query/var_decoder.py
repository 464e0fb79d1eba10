"""``var(b=2, n=b, subdecoder="sample")``: LMQL 0.7.3's variable-by-variable decoder.

One variable at a time: each run so far branches into continuations of the variable in progress
(``b`` samples of it) until each has
reached the next variable or the end; the ``b`` best of those go on, their prompt text after the
variable joined, the ``n`` best of them to the next variable. The finished runs come sorted by
their sum (hypotheses are ranked by sum / length ** 0.7, as in ``beam``).
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import replace
from typing import Any

from lmql_core.query.beam import BeamSearch, Hypothesis, best
from lmql_core.query.errors import QueryError

# "beam" runs (grow) but differs from LMQL 0.7.3 where several runs share a variable: LMQL decodes
# them in one pool with one stopping rule, this decodes each apart; refused until it matches
SUBDECODERS = ("sample",)


class VariableDecoder(BeamSearch):
    async def run(self) -> list[Any]:
        options = self.spec.extra
        self.width = int(options.get("b", 2))
        n = int(options.get("n") or self.width)
        self.subdecoder = options.get("subdecoder", "sample")
        if self.subdecoder not in SUBDECODERS:
            raise QueryError(f"var(subdecoder={self.subdecoder!r}) is not supported; "
                             f"use one of {', '.join(SUBDECODERS)}")
        self.spec = replace(self.spec, n=self.width)  # each step branches b ways
        first = await self.replay([], [], [], forced=False)
        if first.done:
            return [first.result]
        runs: list[Hypothesis] = [first]
        done: list[Hypothesis] = []
        while True:
            ended = [h for run in runs for h in await self.one_variable(run)]
            runs, done = [h for h in ended + done if not h.done], [h for h in ended + done if h.done]
            if not runs:
                break
            runs = [await self.joined(h) for h in best(runs, self.width)]
            runs, done = [h for h in runs + done if not h.done], [h for h in runs + done if h.done]
            if not runs:
                break
            runs = best(runs, n)
            if done and options.get("return_first"):
                break
        return [h.result for h in sorted(done, key=lambda h: -h.total)]

    async def one_variable(self, run: Hypothesis) -> list[Hypothesis]:
        """The continuations of ``run``'s variable in progress, each up to where it ends."""
        variable = run.at
        active = [run] * (self.width if self.subdecoder == "sample" else 1)
        ended: list[Hypothesis] = []
        while active and not (len(ended) == self.width and max(h.normalized for h in active) <
                              min(h.normalized for h in ended)):
            grown = [h for hypothesis in active for h in await self.grow(hypothesis)]
            active = [h for h in grown if h.at is variable and not h.pending]
            ended += [h for h in grown if not (h.at is variable and not h.pending)]
            active = best(active, self.width)
        unique: dict[tuple[int, ...], Hypothesis] = {}
        for h in ended:
            unique.setdefault(tuple(h.tokens), h)
        return list(unique.values())

    async def grow(self, hypothesis: Hypothesis) -> list[Hypothesis]:
        if self.subdecoder == "beam":
            return await self.expand(hypothesis)
        return [await self.sampled(hypothesis)]

    async def sampled(self, hypothesis: Hypothesis) -> Hypothesis:
        at = hypothesis.at
        assert at is not None
        ids = hypothesis.tokens[hypothesis.start:]
        step = at.variable.step(ids)
        if step.done or len(at.prompt_ids) + len(ids) >= self.spec.max_length:
            return await self.end(hypothesis, forced=True)
        forced = step.forced()
        if forced is not None:
            return hypothesis.grown(forced, 0.0)
        temperature = 1.0 if self.spec.temperature is None else float(self.spec.temperature)
        bias = step.logit_bias(at.variable.vocab)
        stream = self.model.token_stream(at.prompt_ids + ids, 1, temperature, bias, **self.spec.options)
        async with aclosing(stream) as entries:
            entry = await anext(entries)
        if entry["token"] == self.eos:
            return await self.end(hypothesis, forced=False)
        return hypothesis.grown(int(entry["token"]), float(entry["logprob"]))

    async def joined(self, h: Hypothesis) -> Hypothesis:
        while h.pending:
            (token, logprob), *rest = h.pending
            h = replace(h.grown(token, logprob, det=True), pending=rest)
        return h
