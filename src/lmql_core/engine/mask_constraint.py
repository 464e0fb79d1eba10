"""A constraint tree of LMQL's kinds (``lmql_core.constraints``) followed by one sequence.

Beside the llguidance grammars (``constraints.Constraint``): the mask of each step is the one the
query runtime would send (``Step.row``: LMQL's token-level rules), computed with the kinds' numpy
masks on ``MaskFiller``'s thread while the forward pass runs. A step where the variable is done
(a stopping phrase reached, nothing left to allow) allows EOS alone, so the sequence ends there;
a single allowed token is the only one the step can choose. After each sampled token, the tokens the
constraints force (one allowed, no EOS) are appended without a model step, and a variable that is
done ends there, as the runtime takes and ends them without asking the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lmql_core.constraints.kinds import Rule
from lmql_core.constraints.mask import ANY, MaskPending, Value
from lmql_core.constraints.step import Step
from lmql_core.constraints.vocabulary import Vocabulary
from lmql_core.engine.constraints import FORCED_TOP, Followed
from lmql_core.engine.sequence import Finish, Sequence, TokenEvent

OPEN = Step(ANY)  # a step whose rule allows every token and the end: not done, nothing forced


class FollowPending(Exception):  # noqa: N818 (not an error: the engine holds the sequence meanwhile)
    """Following a sampled token met a slow mask not computed yet: ``events`` are the token's
    (and forced ones') so far, not sent; ``MaskConstraint.prepare`` then ``follow`` go on."""

    def __init__(self, events: list[TokenEvent]) -> None:
        super().__init__("a mask is pending")
        self.events = events


class MaskConstraint:
    """``rule`` (one variable's constraints) over ``vocab``; rows of ``mask_words`` int32 words."""

    follows_tokens = False  # its state is the sequence's tokens: nothing to hand each one to

    def __init__(self, rule: Rule, vocab: Vocabulary, mask_words: int) -> None:
        self.rule = rule
        self.vocab = vocab
        self.mask_words = mask_words
        self.open_below = rule.open_below()  # with fewer tokens every step is OPEN
        # the last step asked for: its token count, value and step (the next one's value before). A
        # step is asked for twice, by the engine thread after the token before it was sampled
        # (``events_after``) and by the mask thread for its mask (``fill``): computed once
        self._last: tuple[int, Value, Step] | None = None

    def fill(self, generated: list[int], row: np.ndarray) -> None:
        """The mask after ``generated`` into ``row`` (``mask_words`` int32 words, bit i: token i)."""
        step = self._step(generated)
        if step is OPEN:  # every bit: no row to look up
            row[:] = -1
            return
        tokens = step.allowed.tokens
        if tokens is None or not tokens.flags.writeable:  # a mask the vocabulary remembers: its row too
            # (the entry holds the array, so no other array can have its id while the entry lives)
            key = ("packed row", id(tokens), step.allowed.eos, step.stop, self.mask_words)
            row[:] = self.vocab.remember(key, lambda: (tokens, self._packed(step)))[1]
        else:
            row[:] = self._packed(step)

    def needs_mask(self, generated: list[int]) -> bool:
        """Whether the step after ``generated`` bans anything (else the engine fills no row)."""
        return len(generated) >= self.open_below and not self._step(generated).bans_nothing

    def _step(self, generated: list[int]) -> Step:
        """Where the variable stands after ``generated`` (a sequence's tokens only grow)."""
        if self.allows_all_after(len(generated)):  # every token and the end: nothing to compute
            return OPEN
        last = self._last
        if last is not None and last[0] == len(generated):
            return last[2]
        before = last[1] if last is not None and last[0] == len(generated) - 1 else None
        if before is not None:
            before.drop_before()
        value = self.vocab.value(generated[:], before)  # a copy: its text is decoded when read
        step = self.rule.step(value, self.vocab)
        self._last = (len(generated), value, step)
        return step

    def _packed(self, step: Step) -> np.ndarray:
        allowed = step.row(self.mask_words * 32, self.vocab.eos)
        return np.packbits(allowed, bitorder="little").view(np.int32)

    def events_after(self, seq: Sequence, token: int, logprob: float, top: Mapping[int, float],
                     followed: Followed | None) -> tuple[list[TokenEvent], bool]:
        """The events of a token sampled under this mask, then of the tokens the constraints force
        after it (appended to ``seq.generated``, log-prob 0), as the query runtime takes them
        without asking the model; whether ``seq`` ends: its variable is done (finish EOS, without
        an EOS token, as the runtime ends it) or ``max_generated`` is reached. Raises
        ``FollowPending`` where a slow mask is deferred (``vocabulary.slow_masks_deferred``)."""
        return self.follow(seq, [TokenEvent(seq.stream_id, token, logprob, None, top)])

    def follow(self, seq: Sequence, events: list[TokenEvent]) -> tuple[list[TokenEvent], bool]:
        """``events_after`` from the step after ``seq.generated`` on, ``events`` before them (a
        token followed until a mask was pending: ``FollowPending.events``)."""
        while len(seq.generated) < seq.max_generated:
            try:
                step = self._step(seq.generated)
            except MaskPending:
                raise FollowPending(events) from None
            if step.done:
                events[-1].finish_reason = Finish.EOS
                return events, True
            forced = step.forced()
            if forced is None:
                return events, False
            seq.generated.append(forced)
            events.append(TokenEvent(seq.stream_id, forced, 0.0, None, FORCED_TOP))
        events[-1].finish_reason = Finish.LENGTH
        return events, True

    def prepare(self, generated: list[int]) -> None:
        """Compute the step after ``generated`` (its masks remembered), slow masks included: on
        a thread other than the engine's, before ``follow`` goes on there."""
        self._step(generated)

    def allows_all_after(self, generated: int) -> bool:
        """Whether the mask after any ``generated`` tokens lets every token through (no row
        needed: the engine may sample that step before it reads the tokens before it)."""
        return generated < self.open_below or self.rule.allows_all_after(generated)

    def failure(self) -> str:
        return "constraint error: no token is allowed here"


def mask_words(vocab_size: int, vocab: Vocabulary) -> int:
    """Words of a mask row for a model of ``vocab_size`` logits and a tokenizer's ``vocab``."""
    return (max(vocab_size, vocab.size) + 31) // 32


def is_mask_constraint(constraint: Any) -> bool:
    return isinstance(constraint, MaskConstraint)
