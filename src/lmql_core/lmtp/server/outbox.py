"""Token events the engine thread delivered for the sessions on one event loop, until the loop
hands them over (``Outbox``)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from lmql_core.engine.sequence import TokenEvent


class Receiver(Protocol):
    """What the outbox needs of a session (``session.Session``)."""

    defers: bool  # its events wake the loop only when one ends a stream; it takes the others
    closed: bool  # nothing is posted for it any more

    def send_events(self, events: list[TokenEvent]) -> None: ...


class OutboxSink:
    """A session's sink (``engine.sequence.Sink``) into an outbox. ``delivers_with``: the outbox,
    which takes a step's events for all its sessions at once (``post_many``, through
    ``engine.endings.deliver_all``): at 64 OpenAI requests, a session each, one post per session
    was ~3% of a GPU step on the engine thread."""

    __slots__ = ("delivers_with", "hold", "session")

    def __init__(self, outbox: Outbox, session: Receiver, hold: bool = False) -> None:
        # the session holds its sinks: a strong reference back would make a cycle, and a finished
        # request's objects would wait for the collector, whose pauses stop every thread
        self.session: Callable[[], Receiver | None] = weakref.ref(session)
        self.delivers_with, self.hold = outbox, hold

    def __call__(self, events: list[TokenEvent]) -> None:
        self.delivers_with.post_many([(self, events)])


class Outbox:
    """Token events the engine thread delivered to sessions on one event loop, not yet handed to
    them. Steps that arrive while the loop is still due to take earlier ones go with them: waking
    the loop costs the engine thread a system call and a turn for the interpreter's lock. Sessions
    may share one (OpenAI's completions: a session per request, one wake-up per step for all).
    A session that ``defers`` its events (a paced stream between its events) does not wake the
    loop for them unless one ends a stream: it takes them itself when it needs them (``take``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[Receiver, list[TokenEvent]] = {}
        self._lock = threading.Lock()
        self._due = False  # the event loop has been asked to drain

    def post_many(self, deliveries: list[tuple[OutboxSink, list[TokenEvent]]]) -> None:
        """Called on the engine thread with one step's events for sessions of this outbox (those
        of closed ones are dropped). A sink that ``hold``s (a template hole's, whose client reads
        whole holes) or a session that defers wakes the loop only for an event that ends a
        stream; its other events wait for the next wake-up, or its ``take``."""
        wake = False
        with self._lock:
            pending = self._pending
            for sink, events in deliveries:
                session = sink.session()
                if session is None or session.closed:
                    continue
                waiting = pending.get(session)
                if waiting is None:
                    pending[session] = list(events)
                else:
                    waiting.extend(events)
                if not wake and not self._due and (not (sink.hold or session.defers) or _end_any(events)):
                    wake = self._due = True
        if wake:
            self._loop.call_soon_threadsafe(self._drain)

    def take(self, session: Receiver) -> None:
        """On the event loop: hand ``session`` the events that wait for it now."""
        with self._lock:
            events = self._pending.pop(session, None)
        if events:
            session.send_events(events)

    def drop(self, session: Receiver, stream_ids: set[Any]) -> None:
        """Forget ``session``'s events of these streams not handed over yet."""
        with self._lock:
            pending = self._pending.get(session)
            if pending:
                pending[:] = [e for e in pending if e.stream_id not in stream_ids]

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending, self._due = self._pending, {}, False
        for session, events in pending.items():
            session.send_events(events)


def _end_any(events: list[TokenEvent]) -> bool:
    """Whether one of the events ends its stream (as what a paced stream does not wait for)."""
    for event in events:  # noqa: SIM110 (on the engine thread, every step: a loop is 4x cheaper than any())
        if event.finish_reason is not None or event.error is not None:
            return True
    return False
