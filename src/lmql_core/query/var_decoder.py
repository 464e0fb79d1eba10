"""``var(b=2, n=b, subdecoder="sample")``: LMQL 0.7.3's variable-by-variable decoder.

One variable at a time: each run so far branches into continuations of the variable in progress
(``b`` samples of it, or with ``subdecoder="beam"`` its ``b`` most likely tokens a step) until
each has reached the next variable or the end (all runs in one pool, see ``one_variable``);
the ``b`` best of those go on, their prompt text after the variable joined, the ``n`` best of
them to the next variable. The finished runs come sorted by their sum (hypotheses are ranked
by sum / length ** 0.7, as in ``beam``).
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import replace
from typing import Any

from lmql_core.query.beam import BeamSearch, Hypothesis, best
from lmql_core.query.errors import QueryError

SUBDECODERS = ("sample", "beam")


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
            ended = await self.one_variable(runs)
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

    async def one_variable(self, runs: list[Hypothesis]) -> list[Hypothesis]:
        """The continuations of the runs' variable in progress, each up to where it ends, all
        runs decoded in one pool as LMQL's ``topk_var_continuations``: each run keeps its own
        ``b`` best, but one stopping rule counts the pool (all ended ones against all open
        ones), and the variable is the one the first continuation is at (LMQL's
        ``active_variable``): one at another ends."""
        rows = [[run] * (self.width if self.subdecoder == "sample" else 1) for run in runs]
        ended: list[list[Hypothesis]] = [[] for _ in runs]
        active_name: list[str | None] = []
        while any(rows) and not self._pool_settled(rows, ended):
            for i, row in enumerate(rows):
                grown = [h for hypothesis in row for h in await self.grow(hypothesis)]
                on = [h for h in grown if _on_variable(h, active_name)]
                ended[i] += [h for h in grown if not _on_variable(h, active_name)]
                rows[i] = best(on, self.width)
        unique: list[Hypothesis] = []
        for row in ended:  # token-unique within each run's continuations: at the first one's
            unique += {tuple(h.tokens): h for h in row}.values()  # place, the last one (dc.token_unique)
        return unique

    def _pool_settled(self, rows: list[list[Hypothesis]], ended: list[list[Hypothesis]]) -> bool:
        finished = [h for row in ended for h in row]
        return len(finished) == self.width and max(h.normalized for row in rows for h in row) < \
            min(h.normalized for h in finished)

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


def _on_variable(h: Hypothesis, active_name: list[str | None]) -> bool:
    """Whether ``h`` still decodes the pool's variable; the first continuation asked names it
    (``active_name`` holds that name once known, as LMQL's shared ``active_variable``)."""
    name = h.at.name if h.at is not None and not h.pending else None
    if name is None:
        return False
    if not active_name:
        active_name.append(name)
    return name == active_name[0]
