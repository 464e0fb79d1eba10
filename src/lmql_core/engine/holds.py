"""Sequences held out of the batch while a slow mask of their constraint is computed beside the
engine thread, so that no other stream waits for it.

A REGEX state's first mask takes milliseconds (a match per token group, 5-50 ms on a 50k
vocabulary), and a pattern with counted repetition has a new state at every token. Computed on
the engine thread while it follows a step's tokens, it would stop every stream in the batch for
that long. So the engine thread follows tokens with slow masks deferred
(``vocabulary.slow_masks_deferred``): where one is missing, the sequence is held (out of the
batch, its cache freed as a preempted one's: ``Scheduler.hold``) and its sampled token's events
kept unsent; a thread of its own computes the step (``MaskConstraint.prepare``); then, between
two steps, the engine thread follows the token from there (the masks now remembered), sends the
events, and the sequence queues first in its client's line to feed its tokens again. The masks
stay remembered for every later stream of the same pattern.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from lmql_core.constraints.vocabulary import slow_masks_deferred
from lmql_core.engine.endings import Endings, Events
from lmql_core.engine.mask_constraint import FollowPending
from lmql_core.engine.scheduler import Scheduler
from lmql_core.engine.sequence import Sequence, Status, TokenEvent
from lmql_core.engine.steps import EngineStats

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    seq: Sequence
    events: list[TokenEvent]  # followed so far, not sent
    error: str | None  # computing the step failed


class Holds:
    """``lock``: the engine's (it guards the scheduler and is notified when a step is computed)."""

    def __init__(self, scheduler: Scheduler, endings: Endings, lock: threading.Condition,
                 stats: EngineStats) -> None:
        self.scheduler = scheduler
        self.endings = endings
        self.lock = lock
        self.stats = stats
        self._pool: ThreadPoolExecutor | None = None
        self._prepared: list[_Prepared] = []  # guarded by ``lock``

    def hold(self, seq: Sequence, pending: FollowPending) -> None:
        """On the engine thread, where following ``seq``'s sampled token met a deferred mask."""
        with self.lock:
            freed = self.scheduler.hold(seq)
        if freed is None:  # cancelled since the step: nothing to follow
            return
        self.endings.release_ids([freed])
        self.stats.sequences_held += 1
        self._prepare(seq, pending.events)

    def _prepare(self, seq: Sequence, events: list[TokenEvent]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmql-constraints")
        future = self._pool.submit(seq.params.constraint.prepare, list(seq.generated))
        future.add_done_callback(lambda done: self._done(seq, events, done))

    def _done(self, seq: Sequence, events: list[TokenEvent], future: Future[None]) -> None:
        if future.cancelled():  # the engine stopped (its streams ended with that error)
            return
        error = future.exception()
        failure = None
        if error is not None:
            log.error("computing a constraint's mask failed", exc_info=error)
            failure = f"constraint error: {error}"
        with self.lock:
            self._prepared.append(_Prepared(seq, events, failure))
            self.lock.notify()

    def any_ready(self) -> bool:
        """With the lock held: a held sequence's step is computed (the engine has work)."""
        return bool(self._prepared)

    def resume(self, events: Events) -> None:
        """With the lock held, on the engine thread between two steps: follow the held sequences
        whose steps are computed, their events into ``events``; each queues again or ends."""
        prepared, self._prepared = self._prepared, []
        for p in prepared:
            seq = p.seq
            if seq.status is not Status.HELD:  # cancelled meanwhile, or the server stops
                continue
            if p.error is not None:
                self._end(seq, [TokenEvent(seq.stream_id, error=p.error)], events)
                continue
            try:
                with slow_masks_deferred():  # (the next step may need another slow mask)
                    followed, ends = seq.params.constraint.follow(seq, p.events)
            except FollowPending as again:
                self._prepare(seq, again.events)
                continue
            self.stats.tokens_generated += len(followed) - 1  # the forced ones (the first: counted)
            if ends:
                self._end(seq, followed, events)
            else:
                events.setdefault(seq.sink, []).extend(followed)
                self.scheduler.unhold(seq, finished=False)

    def _end(self, seq: Sequence, last: list[TokenEvent], events: Events) -> None:
        self.scheduler.unhold(seq, finished=True)
        self.stats.sequences_finished += 1
        events.setdefault(seq.sink, []).extend(last)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
