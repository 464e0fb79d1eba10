"""Token events the engine thread delivered for the sessions on one event loop, until the loop
hands them over (``Outbox``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from lmql_core.engine.sequence import TokenEvent


class Receiver(Protocol):
    """What the outbox needs of a session (``session.Session``)."""

    defers: bool  # its events wake the loop only when one ends a stream; it takes the others

    def send_events(self, events: list[TokenEvent]) -> None: ...


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

    def post(self, session: Receiver, events: list[TokenEvent], hold: bool = False) -> None:
        """Called on the engine thread. ``hold``: the events wake the loop only if one ends a
        stream (else they wait for the next wake-up), as a deferring session's do."""
        with self._lock:
            pending = self._pending.get(session)
            if pending is None:
                self._pending[session] = list(events)
            else:
                pending.extend(events)
            if self._due or ((hold or session.defers) and not _end_any(events)):
                return
            self._due = True
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
