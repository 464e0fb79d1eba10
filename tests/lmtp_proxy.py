"""A websocket relay on loopback between LMTP clients and a real server: it records the frames
clients send (to see what a client asked, or never asked) and may rewrite the server's frames
(to show a client a server without some extension)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import free_port


class RecordingProxy:
    def __init__(self, upstream: str, rewrite: Callable[[str], str] | None = None) -> None:
        self.upstream = upstream
        self.rewrite = rewrite or (lambda frame: frame)
        self.sent: list[str] = []  # every frame clients sent, in order
        self._clients: set[web.WebSocketResponse] = set()
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def commands(self) -> list[str]:
        return [frame.partition(" ")[0] for frame in list(self.sent)]

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/", self._relay)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def _relay(self, request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        self._clients.add(client)
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"ws://{self.upstream}/", max_msg_size=0) as server:
            downstream = asyncio.create_task(self._down(server, client))
            async for msg in client:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.sent.append(msg.data)
                    await server.send_str(msg.data)
            await server.close()
            await downstream
        return client

    async def _down(self, server: Any, client: web.WebSocketResponse) -> None:
        async for msg in server:
            if msg.type == aiohttp.WSMsgType.TEXT and not client.closed:
                await client.send_str(self.rewrite(msg.data))
        await client.close()

    async def _stop(self) -> None:
        for client in list(self._clients):
            await client.close()
        await self._runner.cleanup()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
