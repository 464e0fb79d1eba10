"""The LMTP websocket server (aiohttp): one session per connection, frames written in order.

Besides the websocket at ``/``: ``/health`` (JSON) and ``/metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import threading
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from lmql_core.errors import RequestError
from lmql_core.lmtp import wire
from lmql_core.lmtp.server.connection import Connection
from lmql_core.lmtp.server.guard import ConnectionGuard
from lmql_core.lmtp.server.metrics import Traffic, render_metrics
from lmql_core.lmtp.server.session import Session
from lmql_core.loading.model_host import ModelHost

log = logging.getLogger(__name__)
HOST_KEY = web.AppKey("host", ModelHost)
LIMITS_KEY = web.AppKey("limits", wire.Limits)
TOKEN_KEY = web.AppKey("auth_token", str)
CONNECTIONS_KEY = web.AppKey("connections", set)
GUARD_KEY = web.AppKey("guard", ConnectionGuard)
TRAFFIC_KEY = web.AppKey("traffic", Traffic)
FRONTEND_SECRET_KEY = web.AppKey("frontend_secret", str)  # what front-end processes show (frontends.py)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def authorized(request: web.Request) -> bool:
    expected = request.app[TOKEN_KEY]
    if not expected:
        return True
    header = request.headers.get("Authorization", "")
    if header:  # "Bearer <token>", the scheme in any case (RFC 9110, 11.1)
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
    else:
        given = request.query.get("token", "")
    # headers arrive as UTF-8 with undecodable bytes kept as surrogates: compare the bytes sent
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected.encode())


async def lmtp_socket(request: web.Request) -> web.StreamResponse:
    if not authorized(request):
        raise web.HTTPUnauthorized(text="this LMTP server needs a token (--auth-token)\n")
    limits = request.app[LIMITS_KEY]
    frontend = FrontendTraffic.of(request)  # an OpenAI front-end process's streams, not a client's
    if frontend is not None:
        limits = frontend.limits(limits)
    ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes, heartbeat=30, compress=False)
    await ws.prepare(request)
    connection = Connection(request, ws, limits)
    session = Session(request.app[HOST_KEY], connection.send, limits, encode_tokens=True,
                      clients=frontend is not None)
    connection.start(session)
    request.app[CONNECTIONS_KEY].add(connection)
    traffic = request.app[TRAFFIC_KEY]
    if frontend is None:
        traffic.clients["lmtp"] += 1
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if frontend is not None:
                    if frontend.told(msg.data):
                        continue
                else:
                    traffic.requests["lmtp"] += 1
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                connection.send("TOKEN", [{"stream_id": None,
                                           "error": "binary frames are not supported; send text"}])
            elif msg.type == WSMsgType.ERROR:
                log.info("connection error: %s", ws.exception())
    finally:
        if frontend is None:
            traffic.clients["lmtp"] -= 1
        else:
            frontend.gone()
        request.app[CONNECTIONS_KEY].discard(connection)
        session.close()
        await connection.close()
    return ws


class FrontendTraffic:
    """An OpenAI front-end process's LMTP connection (``serving/frontends.py``): its session may run
    the streams of all the front-end's requests, and it reports the HTTP requests it takes for
    the metrics (TRAFFIC frames, which are not LMTP requests)."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.clients = 0  # the front-end's requests in flight, as it last said

    @classmethod
    def of(cls, request: web.Request) -> FrontendTraffic | None:
        secret = request.app[FRONTEND_SECRET_KEY]
        given = request.headers.get(wire.FRONTEND_HEADER, "")
        if not secret or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode()):
            return None
        return cls(request.app[TRAFFIC_KEY])

    @staticmethod
    def limits(limits: wire.Limits) -> wire.Limits:
        """Its requests' limits are checked by the front-end, request by request."""
        return dataclasses.replace(limits, max_streams_per_connection=limits.max_streams_per_connection
                                   * limits.max_connections, max_outgoing_bytes=4 * limits.max_outgoing_bytes)

    def told(self, text: str) -> bool:
        """Whether ``text`` was a TRAFFIC frame (taken here)."""
        if not text.startswith(wire.TRAFFIC):
            return False
        with contextlib.suppress(RequestError, TypeError, ValueError):
            _, news = wire.parse_frame(text)
            requests, clients = int(news["requests"]), int(news["clients"])
            self.traffic.requests["openai"] += max(0, requests)
            self.traffic.clients["openai"] += clients - self.clients
            self.clients = clients
        return True

    def gone(self) -> None:
        self.traffic.clients["openai"] -= self.clients
        self.clients = 0


async def shut_down(app: web.Application, grace_s: float) -> None:
    """End every stream with an error entry, let clients read them and close, and after
    ``grace_s`` seconds drop whatever connection is left: shutdown never waits on a client."""
    deadline = asyncio.get_running_loop().time() + grace_s
    app[GUARD_KEY].closing = True
    with contextlib.suppress(TimeoutError):  # the engines stop after their current step
        await asyncio.wait_for(_in_daemon_thread(app[HOST_KEY].close), max(0.0, deadline - _now()) / 2)

    async def close(connection: Connection) -> None:
        await connection.flushed()
        await connection.ws.close()

    connections: list[Connection] = [*app[CONNECTIONS_KEY]]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(close(c) for c in connections), return_exceptions=True),
                               max(0.0, deadline - _now()))
    for connection in connections:
        connection.abort()
    app[GUARD_KEY].abort_all()


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _in_daemon_thread(work: Callable[[], object]) -> None:
    """``work()`` on a daemon thread: unlike ``asyncio.to_thread``, one that never returns does
    not keep the process from exiting."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            work()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody waits
                loop.call_soon_threadsafe(finish)

    threading.Thread(target=run, name="lmql-shutdown", daemon=True).start()
    await done


@web.middleware
async def _handshake_done(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[GUARD_KEY].handshake_done(request.transport)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    models = {
        name: {"active_sequences": m.engine.active_sequences(), "waiting": m.engine.queue_depth()}
        for name, m in request.app[HOST_KEY].models.items()
    }
    return web.json_response({"status": "ok", "models": models,
                              "connections": len(request.app[CONNECTIONS_KEY])})


async def metrics(request: web.Request) -> web.Response:
    if not authorized(request):
        raise web.HTTPUnauthorized(text="this server needs a token (--auth-token)\n")
    body = render_metrics(request.app[HOST_KEY], len(request.app[CONNECTIONS_KEY]), request.app[TRAFFIC_KEY])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def base_app(host: ModelHost, limits: wire.Limits | None = None, auth_token: str = "") -> web.Application:
    """An application with the server's state and no routes (``make_app``; a front-end's)."""
    app = web.Application(middlewares=[_handshake_done])
    app[HOST_KEY] = host
    app[LIMITS_KEY] = limits or wire.Limits()
    app[TOKEN_KEY] = auth_token
    app[CONNECTIONS_KEY] = set()
    app[GUARD_KEY] = ConnectionGuard(app[LIMITS_KEY])
    app[TRAFFIC_KEY] = Traffic()
    app[FRONTEND_SECRET_KEY] = ""
    return app


def make_app(host: ModelHost, limits: wire.Limits | None = None, auth_token: str = "") -> web.Application:
    app = base_app(host, limits, auth_token)
    app.router.add_get("/", lmtp_socket)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
