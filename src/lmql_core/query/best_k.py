"""``best_k(k=4, budget=30, ...)``: LMQL 0.7.3's best-first search over the whole program.

A heap of open hypotheses, each stamped with the step it was made in (the prompt: -1). Each step
takes the ``k`` best of the heap by sum / length ** 0.7 less an age penalty,
``kappa * (step - stamp) ** beta``, extends each by its ``top_k_continuations`` most likely tokens,
moves the finished ones aside, drops those whose last token has a probability under ``gamma``,
and puts the rest back (a token sequence already in the heap keeps its older entry); the heap
keeps its ``max_heap_size`` best. It stops once ``budget`` hypotheses have been extended and one
has finished, or the heap is empty and one has finished; the finished ones are the result, in
the order LMQL's ``dc.topk`` leaves them (numpy 1.26's ``argpartition``, see ``lmql_topk``).
With the heap empty and none finished, LMQL searches on until its step budget, then fails;
this fails at once.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from lmql_core.query.beam import BeamSearch, Hypothesis
from lmql_core.query.errors import QueryError

Stamped = tuple[int, Hypothesis]  # (the step it was made in, the hypothesis)


class BestK(BeamSearch):
    async def run(self) -> list[Any]:
        options = self.spec.extra
        k, budget = int(options.get("k", 4)), int(options.get("budget", 30))
        kappa, beta = float(options.get("kappa", 1)), float(options.get("beta", 0.5))
        gamma, heap_size = float(options.get("gamma", 0.05)), int(options.get("max_heap_size", 500))
        self.spec = replace(self.spec, n=int(options.get("top_k_continuations", 5)))  # expand's width
        first = await self.replay([], [], [], forced=False)
        if first.done:
            return [first.result]
        heap: list[Stamped] = [(-1, first)]
        done: list[Hypothesis] = []
        step = extended = 0
        while (extended < budget and heap) or not done:
            if not heap:
                raise QueryError("best_k found no finished run: every open one fell under gamma="
                                 f"{gamma} (LMQL 0.7.3 searches on until its step budget, then fails)")

            def score(entry: Stamped, now: int = step) -> float:
                return entry[1].normalized - kappa * (now - entry[0]) ** beta

            chosen = set(lmql_topk([score(e) for e in heap], k))
            taken = [e for i, e in enumerate(heap) if i in chosen]
            rest = [e for i, e in enumerate(heap) if i not in chosen]
            grown = [h for _, hypothesis in taken for h in await self.expand(hypothesis)]
            done += [h for h in grown if h.done]
            fresh = [(step, h) for h in grown if not h.done and math.exp(h.logprobs[-1]) >= gamma]
            unique: dict[tuple[int, ...], Stamped] = {}
            for entry in rest + fresh:
                unique.setdefault(tuple(entry[1].tokens), entry)
            heap = list(unique.values())
            heap = [heap[i] for i in lmql_topk([score(e) for e in heap], heap_size)]
            step += 1
            extended += len(taken)
        return [done[i].result for i in lmql_topk([h.normalized for h in done], len(done))]


def lmql_topk(scores: list[float], k: int) -> list[int]:
    """The indices of the ``k`` highest scores in the order LMQL's ``nputil.topk`` gives them,
    ``np.argpartition(scores, -k)[-k:]`` under the numpy LMQL 0.7.3 runs with (1.26), whose order
    later numpy versions do not keep. For the ``k`` that order shows in (all of them: the heap and
    the result; or all but one or two), numpy 1.26 selects by repeated minimum (its
    ``dumb_select``), done here; for a smaller ``k`` only which indices matters."""
    if not scores:
        return []
    k = min(k, len(scores))
    kth = len(scores) - k
    if kth >= 3:
        return [int(i) for i in np.argpartition(np.array(scores), -k)[-k:]]
    order, values = list(range(len(scores))), list(scores)
    for i in range(kth + 1):
        low = min(range(i, len(values)), key=values.__getitem__)  # the first of equal minima
        order[i], order[low] = order[low], order[i]
        values[i], values[low] = values[low], values[i]
    return order[kth:]
