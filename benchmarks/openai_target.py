"""The load driver's requests through OpenAI's HTTP API (``lmtp_load.py --openai``): each stream
is one streamed ``POST /v1/completions`` (a SCORE: an ``echo`` request generating nothing), its
tokens counted as the server-sent events bring them. The model's description (vocabulary, EOS)
comes from LMTP's MODEL_INFO on the same port.

The requests are HTTP/1.0 on a plain asyncio protocol, no HTTP client library: the answer is
then the events' bytes up to the connection's end (no chunked encoding), parsed in the
protocol's callback as they arrive, with no task per stream to wake; at 64 streams a general
client's per-read cost, not the server, would set the rate.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from load_targets import SocketTarget

NOT_LAST = {"finish_reason": None}


class SSEStream(asyncio.Protocol):
    """One request's answer: its status line, then server-sent events, each event's tokens put
    on ``queue`` as (arrival time, entry); ``scored``: an echo request's scored tokens, entries
    all at its first event."""

    def __init__(self, request: bytes, queue: asyncio.Queue[Any], scored: int = 0) -> None:
        self.request, self.queue, self.scored = request, queue, scored
        self.head: bytes | None = b""  # None once the headers have been read
        self.rest = b""
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.head = None
            if not head.startswith(b"HTTP/1.") or head.split(b" ", 2)[1] != b"200":
                self.rest = head + b"\n"  # the error's body follows; reported at the end
                self.head, self.ended = b"", True
        if self.ended:
            self.rest += data
            return
        *events, self.rest = (self.rest + data).split(b"\n\n")
        for event in events:
            if event.startswith(b"data: {"):
                self._tokens(json.loads(event[6:]), now)

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

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:  # not 200: the status line and body
            self.queue.put_nowait((time.perf_counter(), {"error": self.rest.decode(errors="replace")}))


class OpenAITarget:
    def __init__(self, endpoint: str, api_key: str | None = None) -> None:
        host = endpoint.split("://", 1)[-1].rstrip("/").removesuffix("/v1")
        self.lmtp_endpoint = host
        self.host, _, port = host.rpartition(":")
        self.port = int(port)
        self.auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self.transports: list[asyncio.BaseTransport] = []

    async def __aenter__(self) -> OpenAITarget:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for transport in self.transports:
            transport.close()

    async def info(self, model: str) -> dict[str, Any]:
        async with SocketTarget(self.lmtp_endpoint) as lmtp:
            return await lmtp.info(model)

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        scored = len(payload["scored"]) if command == "SCORE" else 0
        stream = SSEStream(self._request(self._body(command, payload)), queue, scored)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: stream, self.host, self.port)
        self.transports.append(transport)
        return queue

    def _request(self, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return (f"POST /v1/completions HTTP/1.0\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"{self.auth}Content-Length: {len(data)}\r\n\r\n").encode() + data

    @staticmethod
    def _body(command: str, payload: dict[str, Any]) -> dict[str, Any]:
        if command == "SCORE":
            return {"model": payload["model"], "prompt": payload["prompt"] + payload["scored"],
                    "max_tokens": 0, "echo": True, "logprobs": 0, "stream": True}
        return {"model": payload["model"], "prompt": payload["prompt"], "max_tokens": payload["max_tokens"],
                "temperature": payload.get("temperature", 0.0), "stream": True,
                "logprobs": payload.get("top_logprobs") or 0, "logit_bias": payload.get("logit_bias")}
