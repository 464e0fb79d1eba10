"""SCORE requests in the engine: the rows of a step's logits each one reads, and its events."""

from __future__ import annotations

from typing import Any

from lmql_core.engine.sequence import Finish, Sequence, Sink, Status, TokenEvent


def scored_rows(seq: Sequence, all_logits: Any) -> Any:
    """The rows of ``all_logits`` (the backend's, for the last tokens ``seq`` was fed: all of them
    or from StepInput.logits_from on) that predict its scored tokens. Row i predicts token i+1
    of what was fed; the first scored token follows the prompt."""
    start = len(seq.prompt) - 1 - (seq.length - len(all_logits))
    return all_logits[start : start + len(seq.scored)]


def missing_logits(backend: Any) -> str:
    return (f"model error: the backend {type(backend).__name__} cannot score: its forward() "
            "returned no StepOutput.all_logits[seq_id] (logits for every appended token) for "
            "an input with StepInput.all_logits set")


def add_events(scored: list[Sequence], scores: list[Any], events: dict[Sink, list[TokenEvent]]) -> None:
    """Each scored sequence's tokens with their log-probs, the last one ending it."""
    for seq, logprobs in zip(scored, scores, strict=True):
        if seq.status is not Status.RUNNING:  # cancelled while its step ran
            continue
        last = len(seq.scored) - 1
        events.setdefault(seq.sink, []).extend(
            TokenEvent(seq.stream_id, token, lp, Finish.SCORED if i == last else None)
            for i, (token, lp) in enumerate(zip(seq.scored, logprobs, strict=True)))
