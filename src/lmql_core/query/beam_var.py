"""``beam_var(n)``: LMQL 0.7.3's variable-wise beam search (``runtime/dclib/decoders.py``).

It grows hypotheses as ``beam`` does (``beam.BeamSearch``), but ranks them by the sum of two
length-normalized scores (the prompt text's tokens and the generated ones apart, the initial
prompt left out, a finished run's EOS too) and keeps, each step: every hypothesis whose step
ended a variable, the n best of the others, and each parent's best child, split into banks by
how many variables they have decided (Post & Vilar's dynamic beam allocation). The prompt text
after a variable joins before the next step; the search ends when no hypothesis is left, when
2n have finished, or when no active one can beat the n best finished ones.
"""

from __future__ import annotations

from dataclasses import replace

from lmql_core.query.beam import ALPHA, BeamSearch, Hypothesis


def det_score(h: Hypothesis, prompt_len: int) -> float:
    logprobs, det = h.logprobs[prompt_len:], h.det[prompt_len:]
    if h.done and logprobs:  # a finished run's EOS does not count
        logprobs, det = logprobs[:-1], det[:-1]
    return _normalized([lp for lp, d in zip(logprobs, det, strict=True) if d]) + \
        _normalized([lp for lp, d in zip(logprobs, det, strict=True) if not d])


def _normalized(logprobs: list[float]) -> float:
    return sum(logprobs) / len(logprobs) ** ALPHA if logprobs else 0.0


def bank_sizes(counts: dict[int, int], beam_size: int) -> dict[int, int]:
    """Post & Vilar: each bank (hypotheses with the same number of variables decided) an equal
    share, the remainder to the most advanced; then room a bank cannot fill passes up, then down."""
    keys = sorted(counts)
    share = beam_size // len(keys)
    sizes = {k: share for k in keys}
    sizes[keys[-1]] += beam_size - share * len(keys)
    rolled = 0  # what the upward pass could not place goes into the downward one
    for order in (keys, list(reversed(keys))):
        for k in order:
            sizes[k] += rolled
            rolled = max(0, sizes[k] - counts.get(k, 0))
            sizes[k] -= rolled
    return sizes


class VariableBeamSearch(BeamSearch):
    async def run(self) -> list[object]:
        first = await self.replay([], [], [], forced=False)
        if first.done:
            return [first.result]
        self.prompt_len = len(first.tokens)
        n = self.spec.n
        active: list[Hypothesis] = [first]
        done: list[Hypothesis] = []
        completed = 0
        for _ in range(self.spec.max_length):
            if not active:
                break
            active = [await self.joined(h) for h in active]
            active, finished = [h for h in active + done if not h.done], [h for h in active + done if h.done]
            completed += len(finished) - len(done)
            done = finished
            grown = []
            for h in active:
                grown += [replace(child, parent=id(h)) for child in await self.expand(h)]
            active, finished = [h for h in grown + done if not h.done], [h for h in grown + done if h.done]
            completed += len(finished) - len(done)
            done = finished
            if not active or completed >= 2 * n or (len(done) >= n and max(map(self.score, active)) <
                                                   min(map(self.score, done))):
                break
            kept = [h for h in active if h.rewritten_now]
            others = [h for h in active if not h.rewritten_now]
            active = kept + (self.allocate(others) if others else [])
            done = self.best(done, n)
        return [h.result for h in sorted(done, key=lambda h: -h.total)]

    def score(self, h: Hypothesis) -> float:
        return det_score(h, self.prompt_len)

    def best(self, hypotheses: list[Hypothesis], k: int) -> list[Hypothesis]:
        return sorted(hypotheses, key=lambda h: -self.score(h))[:k]

    async def joined(self, h: Hypothesis) -> Hypothesis:
        """``h`` with all the prompt tokens pending after its last variable joined."""
        while h.pending:
            (token, logprob), *rest = h.pending
            h = replace(h.grown(token, logprob, det=True), pending=rest)
        return h

    def allocate(self, hypotheses: list[Hypothesis]) -> list[Hypothesis]:
        n = self.spec.n
        by_parent: dict[int, list[Hypothesis]] = {}
        for h in hypotheses:
            by_parent.setdefault(h.parent, []).append(h)
        candidates = self.best(hypotheses, n) + [self.best(children, 1)[0] for children in by_parent.values()]
        unique: dict[tuple[int, ...], Hypothesis] = {}
        for h in candidates:
            unique.setdefault(tuple(h.tokens), h)
        banks: dict[int, list[Hypothesis]] = {}
        for h in unique.values():
            banks.setdefault(len(h.decided), []).append(h)
        sizes = bank_sizes({k: len(v) for k, v in banks.items()}, n)
        return [h for k, bank in banks.items() for h in self.best(bank, sizes[k])]
