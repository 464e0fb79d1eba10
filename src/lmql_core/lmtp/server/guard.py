"""Every TCP connection the server accepts, counted and timed before aiohttp sees it.

At most ``Limits.max_connections`` are open at once: one more is answered ``503`` with the
reason, and closed. A connection must complete an HTTP request (for LMTP: the websocket
handshake) within ``Limits.handshake_timeout_s``, or it is dropped; so half-open connections
cannot pile up and hold file descriptors. At shutdown, ``abort_all`` ends what is left.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web

from lmql_core.lmtp.wire import Limits

REFUSAL_LINGER_S = 1.0  # a refused client gets this long to read the 503 before the socket closes
SNIFF_BYTES = 8192  # a connection's first bytes looked at, at most, to tell where it goes (HandOver)


class HandOver(Protocol):
    """Where connections may go instead (``serving/frontends.py``: OpenAI front-end processes)."""

    def wants(self, head: bytes) -> bool | None:
        """Whether a connection whose first bytes are ``head`` goes there; None: too few to tell."""

    def take(self, transport: asyncio.Transport, head: bytes) -> bool:
        """Hand the connection over, with the bytes read from it so far; False: it stays here."""


class ConnectionGuard:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: dict[asyncio.Transport, GuardedProtocol] = {}
        self.closing = False  # shutting down: new connections are refused
        self.hand_over: HandOver | None = None  # set before the server listens (front-ends)

    def handshake_done(self, transport: Any) -> None:
        protocol = self.open.get(transport)
        if protocol is not None:
            protocol.handshake_done()

    def refusal(self) -> str | None:
        if self.closing:
            return "the server is shutting down"
        if len(self.open) >= self.limits.max_connections:
            return (f"the server holds its maximum of {self.limits.max_connections} connections "
                    "(--max-connections); try again later")
        return None

    def abort_all(self) -> None:
        for transport in list(self.open):
            transport.abort()


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped: it sees the connection only if admitted."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard, head: bytes = b"") -> None:
        """``head``: bytes already read from the connection (by the process that handed it over)."""
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self._head = head
        self._sniffed: bytes | None = None if guard.hand_over is None else b""  # (HandOver.wants)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        loop = asyncio.get_running_loop()
        reason = self.guard.refusal()
        if reason is not None:
            _answer_503(transport, reason)
            self._timer = loop.call_later(REFUSAL_LINGER_S, transport.abort)
            return
        self._admitted = True
        self.guard.open[transport] = self
        self._timer = loop.call_later(self.guard.limits.handshake_timeout_s, transport.abort)
        self.inner.connection_made(transport)
        if self._head:
            self.inner.data_received(self._head)

    def handshake_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._admitted and self._sniffed is not None:
            data = self._sniff(data)
        if self._admitted and data:
            self.inner.data_received(data)

    def _sniff(self, data: bytes) -> bytes:
        """The connection's bytes so far if it stays here, once that is known; else nothing."""
        hand_over = self.guard.hand_over
        assert self._sniffed is not None and hand_over is not None and self.transport is not None
        head = self._sniffed + data
        wanted = hand_over.wants(head)
        if wanted is None and len(head) < SNIFF_BYTES:
            self._sniffed = head
            return b""
        self._sniffed = None
        if wanted and hand_over.take(self.transport, head):
            return b""
        return head

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.handshake_done()
        if self._admitted:
            self.guard.open.pop(self.transport, None)  # type: ignore[arg-type]
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self.inner.resume_writing()


def _answer_503(transport: asyncio.Transport, reason: str) -> None:
    body = (reason + "\n").encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n").encode()
    transport.write(head + body)
    if transport.can_write_eof():
        transport.write_eof()


class GuardedSockSite(web.SockSite):
    """``web.SockSite`` (a socket bound before the model loaded) through the ``ConnectionGuard``."""

    def __init__(self, runner: web.AppRunner, sock: Any, guard: ConnectionGuard, backlog: int) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GuardedProtocol(server(), self._guard),
                                                sock=self._sock, backlog=self._backlog)
