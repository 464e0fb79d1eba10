"""Engines woken once a turn of the event loop: the requests that one turn starts (a burst's
HTTP requests, parsed one after another) reach an idle engine together."""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Wakeable(Protocol):
    def wake(self) -> None: ...


class Wakeups:
    """The engines to wake when the loop has run what is ready now. Woken at once, an idle
    engine would start its first step with the burst's first requests and then take the
    interpreter's lock from the loop, step after step, while the loop still parses the rest
    (each joining the batch in a prompt pass of its own); its tokens could not be sent before
    the loop's turn ends anyway."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._engines: dict[int, Wakeable] = {}

    def add(self, engine: Wakeable) -> None:
        if not self._engines:
            self._loop.call_soon(self._wake)
        self._engines[id(engine)] = engine

    def _wake(self) -> None:
        engines, self._engines = self._engines, {}
        for engine in engines.values():
            engine.wake()


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakeups] = weakref.WeakKeyDictionary()


def wakeups(loop: asyncio.AbstractEventLoop) -> Wakeups:
    """The loop's ``Wakeups`` (one for all its sessions)."""
    found = _BY_LOOP.get(loop)
    if found is None:
        found = _BY_LOOP[loop] = Wakeups(loop)
    return found
