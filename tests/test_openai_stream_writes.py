"""How a streamed completion reaches the socket: the response's headers in the same write as its
first event, and the choices' ends, the usage and ``data: [DONE]`` in one piece (each write is a
system call on the server's event loop, which at 64 streams is part of every token's time)."""

from __future__ import annotations

import asyncio
import json
import re
import socket

from lmql_core.lmtp import wire
from lmql_core.loading.identifiers import parse_model_id
from lmql_core.loading.model_host import ModelHost, load_model
from lmql_core.openai_compat.pacing import StreamPacer
from lmql_core.openai_compat.service import OpenAIService
from tests.conftest import Server

REQUEST = {"model": "lmql-tiny", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0,
           "logprobs": 1, "stream": True}


def test_the_headers_come_with_the_first_event(tiny: Server) -> None:
    data = json.dumps(REQUEST).encode()
    with socket.create_connection(("127.0.0.1", tiny.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        first = sock.recv(65536)  # the headers were written a step before the first token, before
        assert first.startswith(b"HTTP/1.1 200"), first
        assert b"\r\n\r\n" in first and b"data: {" in first, first  # one piece now
        rest = first
        while not rest.endswith(b"0\r\n\r\n"):
            piece = sock.recv(65536)
            assert piece, rest
            rest += piece
    assert b"data: [DONE]\n\n" in rest


async def pieces(request: dict[str, object]) -> list[bytes]:
    host = ModelHost()
    host.add(await asyncio.to_thread(load_model, parse_model_id("lmql-tiny")))
    try:
        service = OpenAIService(host, wire.Limits(), StreamPacer(0))
        completion = await service.completion(request, chat=False)
        return [piece async for piece in completion.sse()]
    finally:
        host.close()


def events(piece: bytes) -> list[dict[str, object]]:
    return [json.loads(event[6:]) for event in piece.split(b"\n\n") if event.startswith(b"data: {")]


def test_the_choices_ends_usage_and_done_are_one_piece() -> None:
    request = {**REQUEST, "n": 2, "stream_options": {"include_usage": True}}
    *earlier, last = asyncio.run(pieces(request))
    assert last.endswith(b"data: [DONE]\n\n") and not any(b"[DONE]" in p for p in earlier)
    ends = [c["choices"][0]["finish_reason"] for p in [*earlier, last] for c in events(p) if c["choices"]]
    assert ends.count("length") == 2  # both choices' ends, each sent once
    last_events = events(last)  # a choice's end (the last to end), then the usage
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "length" for c in last_events)
    assert last_events[-1]["choices"] == [] and last_events[-1]["usage"]["completion_tokens"] == 10


def test_each_completion_has_its_own_id_in_openais_form() -> None:
    async def ids() -> list[str]:
        host = ModelHost()
        host.add(await asyncio.to_thread(load_model, parse_model_id("lmql-tiny")))
        try:
            service = OpenAIService(host, wire.Limits())
            completions = [await service.completion({**REQUEST, "max_tokens": 1}, chat=False) for _ in range(3)]
            for completion in completions:
                completion.close()
            return [completion.id for completion in completions]
        finally:
            host.close()

    found = asyncio.run(ids())
    assert all(re.fullmatch(r"cmpl-[0-9a-f]{32}", i) for i in found), found
    assert len(set(found)) == 3
