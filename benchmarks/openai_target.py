"""The load driver's requests through OpenAI's HTTP API (``lmtp_load.py --openai``): each stream
is one streamed ``POST /v1/completions`` (a SCORE: an ``echo`` request generating nothing), its
tokens counted as the server-sent events bring them. The model's description (vocabulary, EOS)
comes from LMTP's MODEL_INFO on the same port.

Connections are kept alive and reused, as the official ``openai`` client's connection pool (httpx,
up to 100 idle connections) does: a stream takes an idle connection, or opens one when none is
idle, and gives it back once its answer has ended (the warm-up opens them, the measured streams
reuse them, as LMTP's driver sends over the websocket it opened before). ``keep_alive=False``
(``lmtp_load.py --fresh-connections``): a connection per stream, closed by the server after the
answer (``Connection: close``), as a client's first requests are: the server's cost per connection.

The requests are HTTP/1.1 on a plain asyncio protocol, no HTTP client library: the answer's body
(chunked, or of a Content-Length for an error) is parsed in the protocol's callback as it arrives,
with no task per stream to wake; at 64 streams a general client's per-read cost, not the server,
would set the rate.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from load_targets import SocketTarget

NOT_LAST = {"finish_reason": None}


class SSEStream:
    """One request's answer body: server-sent events, each event's tokens put on ``queue`` as
    (arrival time, entry); ``scored``: an echo request's scored tokens, entries all at its first
    event. An answer that is not 200 is reported whole at its end."""

    def __init__(self, queue: asyncio.Queue[Any], scored: int = 0) -> None:
        self.queue, self.scored = queue, scored
        self.rest = b""
        self.failed: bytes | None = None  # the status line and body of an answer that is not 200

    def status(self, head: bytes) -> None:
        if head.split(b" ", 2)[1] != b"200":
            self.failed = head.split(b"\r\n", 1)[0] + b"\n"

    def feed(self, data: bytes, now: float) -> None:
        if self.failed is not None:
            self.failed += data
            return
        *events, self.rest = (self.rest + data).split(b"\n\n")
        for event in events:
            if event.startswith(b"data: {"):
                self._tokens(json.loads(event[6:]), now)

    def ended(self, complete: bool) -> None:
        if self.failed is not None or not complete:
            error = self.failed.decode(errors="replace") if self.failed is not None else "connection lost"
            self.queue.put_nowait((time.perf_counter(), {"error": error}))

    def _tokens(self, chunk: dict[str, Any], now: float) -> None:
        """An event's tokens (several when the server coalesced them), each an entry of the stream."""
        if "error" in chunk:
            self.queue.put_nowait((now, {"error": json.dumps(chunk["error"])}))
        if not chunk.get("choices"):  # the usage
            return
        choice = chunk["choices"][0]
        if self.scored:
            tokens, finish, self.scored = self.scored, "stop", 0
        else:
            tokens = len(choice["logprobs"]["tokens"]) if choice.get("logprobs") else 1
            finish = choice.get("finish_reason")
        for _ in range(tokens - 1):
            self.queue.put_nowait((now, NOT_LAST))
        self.queue.put_nowait((now, {"finish_reason": finish}))


class HTTPConnection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time; the answer's head, then its body (chunked,
    or of a Content-Length) handed to the request's ``SSEStream``; ``idle`` is called when an
    answer has ended and the connection may take the next request."""

    def __init__(self, idle: Callable[[HTTPConnection], None]) -> None:
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.stream: SSEStream | None = None
        self.buffer = b""
        self.head = True  # reading the answer's head
        self.chunked = False
        self.left = 0  # a Content-Length body's bytes still to come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def request(self, data: bytes, stream: SSEStream) -> None:
        assert self.transport is not None and self.stream is None
        self.stream, self.buffer, self.head = stream, b"", True
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        while self.stream is not None and self._parse(now):
            pass

    def _parse(self, now: float) -> bool:
        """Takes what the buffer holds of the answer; True: go on (a part was taken)."""
        assert self.stream is not None
        if self.head:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return False
            self.buffer, self.head = rest, False
            self.stream.status(head)
            lower = head.lower()
            self.chunked = b"transfer-encoding: chunked" in lower
            length = lower.partition(b"content-length:")[2].split(b"\r\n", 1)[0]
            self.left = int(length) if length.strip() else 0
            return True
        if not self.chunked:
            taken, self.buffer = self.buffer[: self.left], self.buffer[self.left :]
            self.left -= len(taken)
            self.stream.feed(taken, now)
            if self.left == 0:
                self._end()
            return False
        size_line, found, rest = self.buffer.partition(b"\r\n")
        if not found:
            return False
        size = int(size_line.split(b";", 1)[0], 16)
        if len(rest) < size + 2:
            return False
        self.buffer = rest[size + 2 :]
        if size == 0:  # the last chunk (no trailers: the server sends none)
            self._end()
            return False
        self.stream.feed(rest[:size], now)
        return True

    def _end(self) -> None:
        stream, self.stream = self.stream, None
        assert stream is not None
        stream.ended(complete=True)
        self.idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.stream is not None:
            self.stream.ended(complete=False)
            self.stream = None


class OpenAITarget:
    def __init__(self, endpoint: str, api_key: str | None = None, keep_alive: bool = True) -> None:
        host = endpoint.split("://", 1)[-1].rstrip("/").removesuffix("/v1")
        self.lmtp_endpoint = host
        self.host, _, port = host.rpartition(":")
        self.port = int(port)
        self.keep_alive = keep_alive
        self.headers = (f"Host: {self.host}\r\nContent-Type: application/json\r\n"
                        + (f"Authorization: Bearer {api_key}\r\n" if api_key else "")
                        + ("" if keep_alive else "Connection: close\r\n"))
        self.connections: list[HTTPConnection] = []
        self.idle: list[HTTPConnection] = []

    async def __aenter__(self) -> OpenAITarget:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()

    async def info(self, model: str) -> dict[str, Any]:
        async with SocketTarget(self.lmtp_endpoint) as lmtp:
            return await lmtp.info(model)

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        scored = len(payload["scored"]) if command == "SCORE" else 0
        connection = await self._connection()
        connection.request(self._request(self._body(command, payload)), SSEStream(queue, scored))
        return queue

    async def _connection(self) -> HTTPConnection:
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: HTTPConnection(self._idle), self.host, self.port)
        self.connections.append(connection)
        return connection

    def _idle(self, connection: HTTPConnection) -> None:
        if self.keep_alive:
            self.idle.append(connection)

    def _request(self, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return (f"POST /v1/completions HTTP/1.1\r\n{self.headers}Content-Length: {len(data)}\r\n\r\n"
                ).encode() + data

    @staticmethod
    def _body(command: str, payload: dict[str, Any]) -> dict[str, Any]:
        if command == "SCORE":
            return {"model": payload["model"], "prompt": payload["prompt"] + payload["scored"],
                    "max_tokens": 0, "echo": True, "logprobs": 0, "stream": True}
        return {"model": payload["model"], "prompt": payload["prompt"], "max_tokens": payload["max_tokens"],
                "temperature": payload.get("temperature", 0.0), "stream": True,
                "logprobs": payload.get("top_logprobs") or 0, "logit_bias": payload.get("logit_bias")}
