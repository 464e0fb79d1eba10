"""A sequence: one stream's request and its progress through the engine."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class Finish(Enum):
    """Why a stream ended with a token (its wire name is the server's business)."""

    EOS = "eos"  # the model's end-of-sequence token
    LENGTH = "length"  # max_tokens generated, or the context is full
    SCORED = "scored"  # the last scored token of a SCORE request


@dataclass(slots=True)
class TokenEvent:
    """One token of one stream, or the error that ends it."""

    stream_id: Any
    token: int = -1
    logprob: float = 0.0
    finish_reason: Finish | None = None
    # more candidates beside the chosen token (whose log-prob is ``logprob``); None: a scored token
    top_logprobs: Mapping[int, float] | None = None
    error: str | None = None


# receives a step's events for one client, in order; a sink with a ``delivers_with`` attribute
# gets them in one ``delivers_with.post_many`` call with that object's other sinks
# (``endings.deliver_all``; ``lmtp.server.outbox.OutboxSink``)
Sink = Callable[[list[TokenEvent]], None]

_ids = itertools.count(1)


class Kind(Enum):
    GENERATE = "generate"
    SCORE = "score"


class Status(Enum):
    """Where a sequence is in its life; only the scheduler changes it (see scheduler.py)."""

    WAITING = "waiting"  # queued: not yet admitted, or preempted (its cache freed)
    RUNNING = "running"  # in the batch: the backend holds its cache
    HELD = "held"  # out of the batch (its cache freed) while a slow mask is computed (holds.py)
    FINISHED = "finished"  # its last event was made; results of steps still in flight are dropped
    CANCELLED = "cancelled"  # its client stopped it; nothing more is sent for it


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_logprobs: int = 0
    top_k: int = 0  # when sampling: only the k most likely tokens (0: all)
    top_p: float = 1.0  # when sampling: only the most likely tokens holding this much probability
    repetition_penalty: float = 1.0  # logits of tokens already in the sequence, as in transformers
    seed: int | None = None  # when sampling: this stream's own noise, the same whatever the batch
    dense_bias: Any = field(default=None, compare=False, repr=False)  # built by the sampler
    # the grammar this stream follows (``constraints.Constraint``): masks its rows, forces tokens
    constraint: Any = field(default=None, compare=False, repr=False)
    # what follows this generation in the same stream (a ``Continuation``: a template's next hole)
    then: Any = field(default=None, compare=False, repr=False)


class Continuation(Protocol):
    """A stream that goes on after a generation ends (a template's next hole, ``lmtp/server/
    template.py``), started by the engine thread without a round trip through the client's event
    loop: the sequence would otherwise leave the batch for that long."""

    stopped: bool  # set, with the engine's lock held, when the stream is cancelled

    def after(self, seq: Sequence) -> Sequence | None:
        """On the engine thread, where ``seq`` (whose ``params.then`` this is) ended with a
        token: the sequence to run next, or None (the stream's client side goes on)."""

    def started(self, seq: Sequence) -> None:
        """With the engine's lock held: ``seq`` (from ``after``) is queued, before the events of
        the generation before it are delivered."""


@dataclass(eq=False)
class Sequence:
    stream_id: Any
    prompt: list[int]
    params: SamplingParams
    sink: Sink  # receives this sequence's TOKEN entries, in order
    kind: Kind = Kind.GENERATE
    scored: list[int] = field(default_factory=list)
    seq_id: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    num_fed: int = 0  # tokens the backend has seen
    status: Status = Status.WAITING  # changed by the scheduler only (and HELD by ``Holds``' scheduler calls)
    max_generated: int = 0  # set by the engine: max_tokens, or fewer where the context ends first
    # the LMTP body it was made from, checked (what an OpenAI front-end passes on to the engine)
    request: dict[str, Any] | None = field(default=None, repr=False)

    def limit_to(self, max_context: int | None) -> None:
        """Set ``max_generated``: max_tokens, or fewer where the context ends first."""
        self.max_generated = self.params.max_tokens
        if max_context is not None:
            room = max_context - self.length
            assert room > 0, f"a request of {self.length} tokens passed the session's context check"
            self.max_generated = min(self.max_generated, room)

    def restart(self) -> None:
        """Preempted, its cache freed: it feeds everything again, under a new id for the backend."""
        self.seq_id = next(_ids)
        self.num_fed = 0

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED or self.status is Status.CANCELLED

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.scored + self.generated

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.scored) + len(self.generated)

    @property
    def unfed(self) -> list[int]:
        # asked for every step of every stream: while decoding, slice the generated tokens only
        fixed = len(self.prompt) + len(self.scored)
        if self.num_fed >= fixed:
            return self.generated[self.num_fed - fixed :]
        return self.tokens[self.num_fed :]

    @property
    def in_prefill(self) -> bool:
        return self.num_fed < len(self.prompt) + len(self.scored)
