"""The LMTP websocket server (aiohttp): one session per connection, frames written in order.

Besides the websocket at ``/``: ``/health`` (JSON) and ``/metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from aiohttp import WSMsgType, web

from lmql_core.lmtp import protocol
from lmql_core.lmtp.metrics import render_metrics
from lmql_core.lmtp.session import Session
from lmql_core.serving import ModelHost

log = logging.getLogger(__name__)
HOST_KEY = web.AppKey("host", ModelHost)
LIMITS_KEY = web.AppKey("limits", protocol.Limits)
TOKEN_KEY = web.AppKey("auth_token", str)
CONNECTIONS_KEY = web.AppKey("connections", set)


def authorized(request: web.Request) -> bool:
    expected = request.app[TOKEN_KEY]
    if not expected:
        return True
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header else request.query.get("token", "")
    return hmac.compare_digest(given.encode(), expected.encode())


async def lmtp_socket(request: web.Request) -> web.StreamResponse:
    if not authorized(request):
        raise web.HTTPUnauthorized(text="this LMTP server needs a token (--auth-token)\n")
    limits = request.app[LIMITS_KEY]
    ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes, heartbeat=30, compress=False)
    await ws.prepare(request)
    outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def send(command: str, payload: Any) -> None:
        outbox.put_nowait(protocol.encode_frame(command, payload))

    session = Session(request.app[HOST_KEY], send, limits, encode_tokens=True)
    request.app[CONNECTIONS_KEY].add(ws)
    writer = asyncio.create_task(_write(ws, outbox))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                send("TOKEN", [{"stream_id": None, "error": "binary frames are not supported; send text"}])
            elif msg.type == WSMsgType.ERROR:
                log.info("connection error: %s", ws.exception())
    finally:
        request.app[CONNECTIONS_KEY].discard(ws)
        session.close()
        outbox.put_nowait(None)
        await writer
    return ws


async def _write(ws: web.WebSocketResponse, outbox: asyncio.Queue[str | None]) -> None:
    while (frame := await outbox.get()) is not None:
        if ws.closed:
            continue
        try:
            await ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            log.info("client went away while sending")


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
    body = render_metrics(request.app[HOST_KEY], len(request.app[CONNECTIONS_KEY]))
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def make_app(host: ModelHost, limits: protocol.Limits | None = None, auth_token: str = "") -> web.Application:
    app = web.Application()
    app[HOST_KEY] = host
    app[LIMITS_KEY] = limits or protocol.Limits()
    app[TOKEN_KEY] = auth_token
    app[CONNECTIONS_KEY] = set()
    app.router.add_get("/", lmtp_socket)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
