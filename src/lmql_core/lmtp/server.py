"""The LMTP websocket server (aiohttp): one session per connection, frames written in order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import WSMsgType, web

from lmql_core.lmtp import protocol
from lmql_core.lmtp.session import Session
from lmql_core.serving import ModelHost

log = logging.getLogger(__name__)
HOST_KEY = web.AppKey("host", ModelHost)
LIMITS_KEY = web.AppKey("limits", protocol.Limits)


async def lmtp_socket(request: web.Request) -> web.WebSocketResponse:
    limits = request.app[LIMITS_KEY]
    ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes, heartbeat=30)
    await ws.prepare(request)
    outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def send(command: str, payload: Any) -> None:
        outbox.put_nowait(protocol.encode_frame(command, payload))

    session = Session(request.app[HOST_KEY], send, limits)
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


def make_app(host: ModelHost, limits: protocol.Limits | None = None) -> web.Application:
    app = web.Application()
    app[HOST_KEY] = host
    app[LIMITS_KEY] = limits or protocol.Limits()
    app.router.add_get("/", lmtp_socket)
    return app
