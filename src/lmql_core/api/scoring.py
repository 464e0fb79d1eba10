"""Scores of several continuations of one prompt (LMQL 0.7's ``ScoringResult``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AGGREGATIONS = ("sum", "mean", "normalized")


@dataclass
class ScoredSequence:
    """One scored continuation as LMQL shows it (``ScoringResult.seqs``): the prompt's tokens
    (without BOS) and the value's, with a log-probability per token (0 for the prompt's)."""

    input_ids: Any  # numpy array of token ids
    logprobs: Any  # numpy array, float32 as LMQL's

    def __len__(self) -> int:
        return len(self.input_ids)


class ScoringResult:
    """``token_scores[i]``: the per-token log-probabilities of ``continuations[i]``; ``seqs`` the
    whole scored sequences. Aggregates follow LMQL 0.7: ``mean`` and ``normalized`` count the
    prompt's tokens too (their log-probabilities are 0)."""

    def __init__(self, prompt: str, continuations: list[str], token_scores: list[list[float]],
                 model_identifier: str = "", prompt_ids: list[int] | None = None,
                 value_ids: list[list[int]] | None = None) -> None:
        import numpy as np

        self.prompt, self.continuations, self.model_identifier = prompt, continuations, model_identifier
        prompt_ids = list(prompt_ids or [])
        value_ids = value_ids if value_ids is not None else [[0] * len(s) for s in token_scores]
        self.num_value_tokens = [len(s) for s in token_scores]
        self.seqs = [ScoredSequence(np.array(prompt_ids + list(ids), dtype=np.int64),
                                    np.concatenate([np.zeros(len(prompt_ids), dtype=np.float32),
                                                    np.array(scores, dtype=np.float32)]))
                     for ids, scores in zip(value_ids, token_scores, strict=True)]

    @property
    def full_token_scores(self) -> list[Any]:
        return [s.logprobs for s in self.seqs]

    @property
    def token_scores(self) -> list[Any]:
        return [s.logprobs[len(s) - n:] for s, n in zip(self.seqs, self.num_value_tokens, strict=True)]

    def scores(self, agg: str = "sum", alpha: float = 0.7) -> Any:
        """One number per continuation (a numpy array).

        ``sum``: the log-probability of the continuation; ``mean``: the sum over the scored
        sequence's length; ``normalized``: the sum over that length ``** alpha``.
        """
        import numpy as np

        sums = np.array([float(s.logprobs.sum()) for s in self.seqs])
        lengths = np.array([max(len(s), 1) for s in self.seqs])
        if agg == "sum":
            return sums
        if agg == "mean":
            return sums / lengths
        if agg.startswith("normalized"):
            return sums / lengths ** alpha
        raise ValueError(f"unknown aggregation '{agg}'; use one of {', '.join(AGGREGATIONS)}")

    def logprobs(self, agg: str = "sum") -> Any:
        """The scores turned into a log-distribution over the given continuations."""
        import numpy as np

        scores = self.scores(agg)
        top = scores.max()
        return scores - (top + np.log(np.exp(scores - top).sum()))

    def probs(self, agg: str = "sum") -> Any:
        import numpy as np

        return np.exp(self.logprobs(agg))

    def argmax(self, agg: str = "sum") -> str:
        return self.continuations[int(self.scores(agg).argmax())]

    def __str__(self) -> str:
        rows = "".join(f"\n  {c!r}: {s:.4f}" for c, s in zip(self.continuations, self.scores(), strict=True))
        return f"ScoringResult(model={self.model_identifier!r}, prompt={self.prompt!r}){rows}"
