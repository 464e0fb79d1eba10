"""One websocket connection's outgoing side: its frames, in order, with a bound on what waits.

A client that stops reading makes the socket's send wait; the frames behind it wait here. Past
``Limits.max_outgoing_bytes`` the connection's streams end with an error entry (the client sees
why when it reads again) and the engine frees them; past twice that (a client that keeps asking
and never reads) the connection is closed. Either way, memory held for one client stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from aiohttp import web

from lmql_core.lmtp import wire
from lmql_core.lmtp.server.session import Session

log = logging.getLogger(__name__)


class Connection:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse, limits: wire.Limits) -> None:
        self.ws = ws
        self.transport = request.transport
        self.limits = limits
        self.session: Session | None = None  # set by the server once the session exists
        self._frames: deque[str] = deque()
        self.unsent_bytes = 0
        self._ready = asyncio.Event()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None

    def start(self, session: Session) -> None:
        self.session = session
        self._writer = asyncio.create_task(self._write())

    def send(self, command: str, payload: Any) -> None:
        if self._closed:
            return
        frame = wire.encode_frame(command, payload)
        self._frames.append(frame)
        self.unsent_bytes += len(frame)  # JSON is ASCII: characters are bytes
        self._ready.set()
        if self.unsent_bytes > self.limits.max_outgoing_bytes:
            self._overflow()

    def _overflow(self) -> None:
        limit = self.limits.max_outgoing_bytes
        if self.unsent_bytes > 2 * limit:
            log.info("closing a connection that does not read (%d bytes unsent)", self.unsent_bytes)
            self.abort()
        elif self.session is not None and self.session.has_streams():
            self.session.end_all(f"stream ended: the client did not read the server's frames (over {limit} "
                                 "bytes waiting to be sent; --max-outgoing-bytes)")

    async def _write(self) -> None:
        while True:
            while not self._frames:
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
            frame = self._frames.popleft()
            try:
                if not self.ws.closed:
                    await self.ws.send_str(frame)  # waits while the client does not read
            except (ConnectionError, RuntimeError):
                log.info("client went away while sending")
            finally:
                if not self._closed:
                    self.unsent_bytes -= len(frame)

    async def flushed(self) -> None:
        """Until every frame queued so far has been handed to the socket."""
        while self._frames and not self._closed:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """The client went away (or the server closes): drop what is unsent, stop the writer."""
        self._closed = True
        self._frames.clear()
        self.unsent_bytes = 0
        self._ready.set()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def abort(self) -> None:
        """Drop the TCP connection now, whatever the client does."""
        if self.transport is not None:
            self.transport.abort()
