"""Scores of several continuations of one prompt."""

from __future__ import annotations

import math
from dataclasses import dataclass

AGGREGATIONS = ("sum", "mean", "normalized")


@dataclass
class ScoringResult:
    """``token_scores[i]`` holds the per-token log-probabilities of ``continuations[i]``."""

    prompt: str
    continuations: list[str]
    token_scores: list[list[float]]
    model_identifier: str = ""

    def scores(self, agg: str = "sum", alpha: float = 0.7) -> list[float]:
        """One number per continuation.

        ``sum``: the log-probability of the whole continuation; ``mean``: per token;
        ``normalized``: the sum divided by ``len(tokens) ** alpha`` (a length penalty).
        """
        if agg == "sum":
            return [sum(lps) for lps in self.token_scores]
        if agg == "mean":
            return [sum(lps) / len(lps) if lps else 0.0 for lps in self.token_scores]
        if agg.startswith("normalized"):
            return [sum(lps) / len(lps) ** alpha if lps else 0.0 for lps in self.token_scores]
        raise ValueError(f"unknown aggregation '{agg}'; use one of {', '.join(AGGREGATIONS)}")

    def logprobs(self, agg: str = "sum") -> list[float]:
        """The scores turned into a log-distribution over the given continuations."""
        scores = self.scores(agg)
        top = max(scores)
        total = top + math.log(sum(math.exp(s - top) for s in scores))
        return [s - total for s in scores]

    def probs(self, agg: str = "sum") -> list[float]:
        return [math.exp(lp) for lp in self.logprobs(agg)]

    def argmax(self, agg: str = "sum") -> str:
        scores = self.scores(agg)
        return self.continuations[scores.index(max(scores))]

    def __str__(self) -> str:
        rows = "".join(f"\n  {c!r}: {s:.4f}" for c, s in zip(self.continuations, self.scores(), strict=True))
        return f"ScoringResult(model={self.model_identifier!r}, prompt={self.prompt!r}){rows}"
