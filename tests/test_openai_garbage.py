"""A finished OpenAI request is freed as it ends, not left in reference cycles for the garbage
collector: each collection stops every thread of the server (the engine's included), and one
request's cycle (its completion, session, choices, decoders: ~23 objects) made the collections of
a 64-request burst several times longer. The collector itself is the reference here: with
``DEBUG_SAVEALL`` it keeps whatever it found unreachable, and none of it may be ours."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lmql_core.lmtp import wire
from lmql_core.lmtp.server.app import make_app
from lmql_core.lmtp.server.session import Session
from lmql_core.loading.identifiers import parse_model_id
from lmql_core.loading.model_host import ModelHost, load_model
from lmql_core.openai_compat import http as openai_http
from lmql_core.openai_compat.choices import Choice
from lmql_core.openai_compat.completion import Completion

pytestmark = pytest.mark.hf
OURS = (Completion, Session, Choice)
REQUESTS: list[dict[str, Any]] = [
    {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0},
    {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "stream": True, "logprobs": 2},
    {"prompt": ["The cat", "A dog"], "max_tokens": 3, "n": 2, "echo": True, "logprobs": 1},
    {"prompt": "x" * 10, "max_tokens": 10**6},  # refused: past the context
]


async def serve_and_ask(host: ModelHost) -> list[int]:
    app = make_app(host, wire.Limits())
    openai_http.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    statuses = []
    try:
        async with aiohttp.ClientSession() as http:
            for body in REQUESTS * 3:
                async with http.post(f"http://127.0.0.1:{port}/v1/completions",
                                     json={"model": "lmql-tiny", **body}) as response:
                    await response.read()
                    statuses.append(response.status)
    finally:
        await runner.cleanup()
    return statuses


def test_a_finished_request_leaves_no_cycles_for_the_collector() -> None:
    host = ModelHost()
    host.add(load_model(parse_model_id("lmql-tiny")))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        statuses = asyncio.run(serve_and_ask(host))
        gc.collect()
        ours = [type(o).__name__ for o in gc.garbage if isinstance(o, OURS)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        host.close()
    assert statuses == [200, 200, 200, 400] * 3
    assert ours == [], f"left for the collector: {sorted(set(ours))} ({len(ours)} objects)"
