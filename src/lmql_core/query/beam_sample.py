"""``beam_sample(n=4, temperature=1.0)``: LMQL 0.7.3's sampled beam search.

As ``beam``, but each step repeats every open hypothesis ``n`` times and extends each copy by one
sampled token (a prompt token pending after a variable joins every copy alike, so copies can be
equal; LMQL keeps them). Open and finished hypotheses keep the ``n`` best each by
sum / length ** 0.7; the search stops when ``n`` have finished and no open one scores above the
worst of them, or none is open. The finished ones come best first (LMQL leaves them in
``dc.topk``'s unsorted order, see ``best_k.lmql_topk``; sampled runs compare by their set only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lmql_core.query.beam import Hypothesis, best
from lmql_core.query.var_decoder import VariableDecoder


class BeamSample(VariableDecoder):
    async def run(self) -> list[Any]:
        n = self.spec.n
        self.spec = replace(self.spec, temperature=self.spec.temperature or 1.0)  # LMQL: 0 is 1.0 too
        first = await self.replay([], [], [], forced=False)
        if first.done:
            return [first.result]
        active: list[Hypothesis] = [first]
        done: list[Hypothesis] = []
        for _ in range(self.spec.max_length):
            if not active:
                break
            grown = [await self.sample_step(h) for h in active for _ in range(n)]
            pool = grown + done
            active = best([h for h in pool if not h.done], n)
            done = best([h for h in pool if h.done], n)
            if len(done) == n and (not active or max(h.normalized for h in active) <
                                   min(h.normalized for h in done)):
                break
        return [h.result for h in done]

    async def sample_step(self, hypothesis: Hypothesis) -> Hypothesis:
        if hypothesis.pending:
            (token, logprob), *rest = hypothesis.pending
            return replace(hypothesis.grown(token, logprob, det=True), pending=rest)
        return await self.sampled(hypothesis)
