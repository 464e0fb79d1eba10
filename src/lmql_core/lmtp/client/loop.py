"""The client's event loop: one background thread per process owns every connection.

Async callers await it from their own loop, sync callers block on it; so the sync API works
inside and outside a running event loop, and one websocket serves the whole process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()
_closers: list[Any] = []
_THREAD_NAME = "lmql-client"


def client_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name=_THREAD_NAME, daemon=True).start()
            atexit.register(_shutdown)
        return _loop


def on_shutdown(close: Any) -> None:
    """``close`` is a coroutine function run on the client loop when the process exits."""
    _closers.append(close)


def _shutdown() -> None:
    if _loop is None or not _loop.is_running():
        return

    async def close_all() -> None:
        await asyncio.gather(*(c() for c in _closers), return_exceptions=True)

    with contextlib.suppress(Exception):  # exiting anyway: a server gone first is fine
        asyncio.run_coroutine_threadsafe(close_all(), _loop).result(timeout=5)
    _loop.call_soon_threadsafe(_loop.stop)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    loop = client_loop()
    if threading.current_thread().name == _THREAD_NAME:
        coro.close()
        raise RuntimeError("a *_sync method was called from lmql's own client loop; await the async one")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    loop = client_loop()
    try:
        if asyncio.get_running_loop() is loop:
            return await coro
    except RuntimeError:
        pass
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
