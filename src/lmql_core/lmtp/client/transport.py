"""LMTP client transports: many streams multiplexed over one websocket (or, in ``lmtp.local``,
over an in-process session).

Everything here runs on the client loop (``lmql_core.lmtp.client.loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from lmql_core.errors import ConnectionLost, LMQLError, ServerError
from lmql_core.lmtp import wire
from lmql_core.lmtp.client.loop import client_loop, on_shutdown

_END = object()


class LMTPClient:
    """Routes TOKEN entries to per-stream queues and MSG answers to their waiters."""

    # whether the server stops a stream on CANCEL (an extension it advertises in MODEL_INFO):
    # a stream abandoned before its end is then cancelled, not left generating
    cancels = False

    def __init__(self) -> None:
        self._streams: dict[Any, asyncio.Queue[Any]] = {}
        self._ids = itertools.count(1)
        self._cancelling: set[asyncio.Task[None]] = set()
        # connections opened so far: a new one may reach another server (restarted with another
        # model behind the same endpoint), so what was learnt from the last one is stale
        self.connections = 0

    async def _send(self, command: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _ensure_open(self) -> None:
        """Connect if not connected."""

    async def connection(self) -> int:
        """Which connection requests go over now (connecting if there is none): what was learnt
        of the server over another one must be asked again."""
        await self._ensure_open()
        return self.connections

    def _dispatch(self, command: str, payload: Any) -> None:
        entries = payload if isinstance(payload, list) else [payload]
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            queue = self._streams.get(entry.get("stream_id"))
            if queue is None:
                continue
            queue.put_nowait(entry if command == "TOKEN" or "error" in entry else {"msg": entry})

    def _fail_all(self, message: str) -> None:
        for queue in self._streams.values():
            queue.put_nowait({"error": message, "lost": True})

    async def request(self, command: str, payload: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """Send one request and yield the entries of its stream until it ends."""
        await self._ensure_open()
        stream_id = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[stream_id] = queue
        ended = False
        try:
            await self._send(command, dict(payload, stream_id=stream_id))
            while True:
                entry = await queue.get()
                ended = "error" in entry or "msg" in entry or entry.get("finish_reason") is not None
                if "error" in entry:
                    raise (ConnectionLost if entry.get("lost") else ServerError)(entry["error"])
                yield entry
                if ended:
                    return
        finally:
            self._streams.pop(stream_id, None)
            if not ended and self.cancels:  # abandoned: broken out of, cancelled or closed early
                self._cancel_soon(stream_id)

    def _cancel_soon(self, stream_id: Any) -> None:
        """Send CANCEL for an abandoned stream, without waiting (this may run in a cancelled task)."""
        try:
            task = asyncio.get_running_loop().create_task(self._send_cancel(stream_id))
        except RuntimeError:  # finalized after the loop stopped: the connection is gone too
            return
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _send_cancel(self, stream_id: Any) -> None:
        with contextlib.suppress(Exception):  # a connection that is gone has stopped the stream
            await self._send(wire.CANCEL, {"stream_id": stream_id})

    async def model_info(self, model: str) -> dict[str, Any]:
        async for entry in self.request("MODEL_INFO", {"model": model}):
            answer = dict(entry["msg"])
            info = answer.get("model_info")
            extensions = info.get("extensions") if isinstance(info, dict) else None
            if isinstance(extensions, dict) and extensions.get("cancel") is True:
                self.cancels = True
            return answer
        raise ConnectionLost("no answer to MODEL_INFO")

    async def tokenizer(self, model: str) -> dict[str, Any]:
        """The served model's tokenizer (the TOKENIZER extension; see MODEL_INFO's extensions)."""
        async for entry in self.request(wire.TOKENIZER, {"model": model}):
            return dict(entry["msg"]["tokenizer"])
        raise ConnectionLost("no answer to TOKENIZER")

    async def close(self) -> None:
        pass


class WebSocketClient(LMTPClient):
    _shared: ClassVar[dict[tuple[str, str | None], WebSocketClient]] = {}

    def __init__(self, endpoint: str, api_key: str | None = None) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.api_key = api_key
        self._ws: Any = None
        self._session: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    def shared(cls, endpoint: str | None = None, api_key: str | None = None, **_: Any) -> WebSocketClient:
        """One connection per process and endpoint."""
        endpoint = normalize_endpoint(endpoint)
        api_key = api_key or os.environ.get("LMQL_AUTH_TOKEN")
        key = (endpoint, api_key)
        if key not in cls._shared:
            cls._shared[key] = asyncio.run_coroutine_threadsafe(_construct(cls, endpoint, api_key),
                                                                client_loop()).result()
        return cls._shared[key]

    async def _ensure_open(self) -> None:
        async with self._connecting:
            if self._ws is not None and not self._ws.closed:
                return
            import aiohttp

            if self._session is None:
                self._session = aiohttp.ClientSession()
                on_shutdown(self.close)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            try:
                self._ws = await self._session.ws_connect(
                    f"{self.endpoint}/", headers=headers, max_msg_size=0, heartbeat=30
                )
            except aiohttp.WSServerHandshakeError as e:
                if e.status == 401:
                    raise ConnectionLost(f"the LMTP server at {self.endpoint} wants a token: pass "
                                         "api_key=... or set LMQL_AUTH_TOKEN") from None
                raise ConnectionLost(f"{self.endpoint} is not an LMTP server: {e}") from None
            except aiohttp.ClientConnectorError as e:  # its text: "... ssl:default [Connect call failed ..."
                number, cause = e.os_error.errno or 0, e.os_error
                reason = os.strerror(number) if number > 0 else cause.strerror or str(cause)
                raise ConnectionLost(f"cannot reach the LMTP server at {self.endpoint}: {reason}") from None
            except (aiohttp.ClientError, OSError) as e:
                raise ConnectionLost(f"cannot reach the LMTP server at {self.endpoint}: {e}") from None
            self.cancels = False  # a new connection, perhaps to another server: until MODEL_INFO says
            self.connections += 1
            self._reader = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: Any) -> None:
        import aiohttp

        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    command, payload = wire.parse_frame(msg.data)
                except Exception:
                    continue
                self._dispatch(command, payload)
        self._fail_all(f"the connection to {self.endpoint} closed ({ws.close_code})")

    async def _send(self, command: str, payload: dict[str, Any]) -> None:
        await self._ws.send_str(wire.encode_frame(command, payload))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()


async def _construct(cls: type[WebSocketClient], endpoint: str, api_key: str | None) -> WebSocketClient:
    return cls(endpoint, api_key)  # created on the client loop, where its lock must live


def normalize_endpoint(endpoint: str | None) -> str:
    endpoint = endpoint or os.environ.get("LMQL_ENDPOINT") or "localhost:8080"
    if endpoint.isdigit():
        raise LMQLError(f"the endpoint '{endpoint}' is a port without a host: use "
                        f"localhost:{endpoint} (host:port)")
    if "://" not in endpoint:
        endpoint = "ws://" + endpoint
    return endpoint.rstrip("/")
