"""Scores of several continuations of one prompt."""

from __future__ import annotations

from dataclasses import dataclass

AGGREGATIONS = ("sum", "mean", "normalized")


@dataclass
class ScoringResult:
    """``logprobs[i]`` holds the per-token log-probabilities of ``continuations[i]``."""

    prompt: str
    continuations: list[str]
    logprobs: list[list[float]]
    model_identifier: str = ""

    def scores(self, agg: str = "sum") -> list[float]:
        """``sum``: log-prob of the whole continuation; ``mean``: per token; ``normalized``: the
        sums turned into probabilities over the given continuations (they add up to 1)."""
        if agg == "sum":
            return [sum(lps) for lps in self.logprobs]
        if agg == "mean":
            return [sum(lps) / len(lps) if lps else 0.0 for lps in self.logprobs]
        if agg == "normalized":
            import math

            sums = self.scores("sum")
            top = max(sums)
            weights = [math.exp(s - top) for s in sums]
            total = sum(weights)
            return [w / total for w in weights]
        raise ValueError(f"unknown aggregation '{agg}'; use one of {', '.join(AGGREGATIONS)}")

    def argmax(self, agg: str = "sum") -> str:
        scores = self.scores(agg)
        return self.continuations[scores.index(max(scores))]

    def __str__(self) -> str:
        rows = ", ".join(f"{c!r}: {s:.4f}" for c, s in zip(self.continuations, self.scores(), strict=True))
        return f"ScoringResult({self.prompt!r} -> {{{rows}}})"
