"""How the engine ends sequences: caches released, errors and tokens handed to their clients, and
the sequences that follow some of them in their streams (a template's next hole) queued."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lmql_core.base.backend import Backend, ReleasesTogether, TakesOver
from lmql_core.engine.scheduler import Scheduler
from lmql_core.engine.sequence import Sequence, Sink, Status, TokenEvent
from lmql_core.engine.steps import EngineStats

log = logging.getLogger(__name__)

Events = dict[Sink, list[TokenEvent]]  # a step's events, grouped by client
Delivered = TypeVar("Delivered")


def deliver(sink: Callable[[Delivered], None], events: Delivered) -> None:
    """``sink(events)``: a sink's events, or (``post_many``) several sinks' together."""
    try:
        sink(events)
    except Exception:  # a broken client must not stop the engine
        log.exception("delivering tokens failed")


def deliver_all(events: Events) -> None:
    """Each sink its events; sinks with the same ``delivers_with`` (an object with ``post_many``,
    as ``lmtp.server.outbox.OutboxSink``'s outbox) get theirs in one call to it."""
    together: dict[Any, list[tuple[Any, list[TokenEvent]]]] = {}
    for sink, batch in events.items():
        if not batch:  # (a client's only row this step may have been held: holds.py)
            continue
        receiver = getattr(sink, "delivers_with", None)
        if receiver is None:
            deliver(sink, batch)
        else:
            together.setdefault(receiver, []).append((sink, batch))
    for receiver, deliveries in together.items():
        deliver(receiver.post_many, deliveries)


class Endings:
    """Ends the engine's sequences; ``lock`` guards the scheduler (the engine's)."""

    def __init__(self, backend: Backend, scheduler: Scheduler, lock: threading.Condition,
                 stats: EngineStats) -> None:
        self.backend = backend
        self.scheduler = scheduler
        self.lock = lock
        self.stats = stats
        self._releases_together = isinstance(backend, ReleasesTogether)
        self._takes_over = backend if isinstance(backend, TakesOver) else None

    def finish(self, seqs: list[Sequence]) -> list[Sequence]:
        """End those of ``seqs`` still running, their caches released together (sequences that
        end in the same step often end together: a batch of equal requests); returns them."""
        if not seqs:
            return []
        with self.lock:
            ended = self.scheduler.finish(seqs)
        self.stats.sequences_finished += len(ended)
        self.release(ended)
        return ended

    def finish_generations(self, ended: list[Sequence]) -> None:
        """End ``ended`` (sequences just finished with a token) and start what follows in their
        streams (``SamplingParams.then``: a template's next hole): in the ended sequence's place
        and cache where the backend can (``TakesOver``: it feeds only the tokens after those they
        share), else queued as a client's request would be. A continuation that fails leaves the
        stream to its client side, which meets the same error."""
        going_on = self._following(ended)
        if going_on:
            with self.lock:
                going_on = [(seq, following) for seq, following in going_on
                            if not self._take_over(seq, following)]
        finished = self.finish(ended)  # (those taken over have ended already)
        if not going_on:
            return
        ended_now = {id(seq) for seq in finished}
        with self.lock:
            for seq, following in going_on:
                then = seq.params.then
                if id(seq) in ended_now and not then.stopped:
                    then.started(following)
                    self.scheduler.add(following)

    def _following(self, ended: list[Sequence]) -> list[tuple[Sequence, Sequence]]:
        """The next sequences of the streams of ``ended`` that go on (``Continuation.after``)."""
        going_on = []
        for seq in ended:
            then = seq.params.then
            if then is None or seq.status is not Status.RUNNING:
                continue
            try:
                following = then.after(seq)
            except Exception:
                log.exception("going on after a sequence failed")
                continue
            if following is not None:
                following.limit_to(self.backend.max_context)
                going_on.append((seq, following))
        return going_on

    def _take_over(self, seq: Sequence, following: Sequence) -> bool:
        """With the lock held: ``following`` runs in running ``seq``'s place, with its cache,
        where the backend can pass it on; whether it does."""
        then = seq.params.then
        if (self._takes_over is None or seq.status is not Status.RUNNING or then.stopped
                or following.sink is not seq.sink):  # (another client's: it queues as a request)
            return False
        try:
            kept = self._takes_over.take_over(seq.seq_id, following.seq_id, following.prompt)
        except Exception:
            log.exception("passing sequence %s's cache on failed", seq.seq_id)
            return False
        if kept is None:
            return False
        following.num_fed = kept
        self.scheduler.take_over(seq, following)
        then.started(following)
        self.stats.sequences_finished += 1
        self.stats.sequences_taken_over += 1
        return True

    def end(self, seq: Sequence, event: TokenEvent) -> None:
        """End ``seq`` with ``event`` (an error), unless it ended or was cancelled already."""
        if self.finish([seq]):
            deliver(seq.sink, [event])

    def end_all(self, seqs: list[Sequence], error: str) -> None:
        for seq in seqs:
            self.end(seq, TokenEvent(seq.stream_id, error=error))

    def end_failed_rows(self, seqs: list[Sequence], errors: dict[int, str]) -> None:
        """End the sequences whose rows the backend reported failed (``StepOutput.errors``)."""
        if not errors:  # as nearly always: no pass over the batch
            return
        for seq in seqs:
            if seq.seq_id in errors:
                self.end(seq, TokenEvent(seq.stream_id, error=f"model error: {errors[seq.seq_id]}"))

    def fail_all(self, message: str) -> None:
        """With the lock held: end every sequence with ``message`` (the engine stops)."""
        ended, holding = self.scheduler.finish_all()
        for seq in ended:
            deliver(seq.sink, [TokenEvent(seq.stream_id, error=message)])
        self.release(holding)

    def release(self, seqs: list[Sequence]) -> None:
        self.release_ids([seq.seq_id for seq in seqs])

    def release_ids(self, seq_ids: list[int]) -> None:
        if not seq_ids:
            return
        try:
            if self._releases_together:  # together where the backend can, else one release each
                self.backend.release_all(seq_ids)  # type: ignore[attr-defined]
            else:
                for seq_id in seq_ids:
                    self.backend.release(seq_id)
        except Exception:
            log.exception("releasing sequences %s failed", seq_ids)
