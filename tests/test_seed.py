"""LMTP's ``seed`` extension: a seeded stream samples the same tokens whatever else runs beside it."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import RawClient, Server

REQUEST = {"model": "random", "prompt": [5, 6, 7], "max_tokens": 12, "temperature": 1.0}


def tokens_of(server: Server, requests: dict[int, dict[str, Any]]) -> dict[int, list[int]]:
    async def run() -> dict[int, list[int]]:
        async with RawClient(server.endpoint) as c:
            for sid, request in requests.items():
                await c.send("GENERATE", {**request, "stream_id": sid})
            entries = await c.collect(set(requests))
        assert all("error" not in e for es in entries.values() for e in es), entries
        return {sid: [e["token"] for e in es] for sid, es in entries.items()}
    return asyncio.run(run())


def test_a_seeded_stream_samples_the_same_alone_and_in_a_batch(random_server: Server) -> None:
    alone = tokens_of(random_server, {1: {**REQUEST, "seed": 11}})[1]
    crowd = {1: {**REQUEST, "seed": 11}, **{i: {**REQUEST, "prompt": [i, 9]} for i in range(2, 6)},
             6: {**REQUEST, "seed": 12}}
    together = tokens_of(random_server, crowd)
    assert together[1] == alone
    assert together[6] != alone  # another seed, other noise
    unseeded = tokens_of(random_server, {1: REQUEST, 2: REQUEST})
    assert unseeded[1] != unseeded[2]  # without a seed, each stream its own draw as before


def test_a_bad_seed_is_refused(random_server: Server) -> None:
    async def run(seed: Any) -> str:
        async with RawClient(random_server.endpoint) as c:
            await c.send("GENERATE", {**REQUEST, "stream_id": 1, "seed": seed})
            return str((await c.stream(1))[0].get("error"))
    assert "'seed' must be an integer" in asyncio.run(run("7"))
    assert "'seed' must be between 0 and" in asyncio.run(run(-1))
