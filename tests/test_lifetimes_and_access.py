"""Disconnects, load, auth tokens, /health and /metrics on a real server process."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
import urllib.request

import aiohttp
import pytest

import lmql
from lmql_core.errors import ConnectionLost
from tests.conftest import RawClient, Server, read_metric, wait_until


def _get(server: Server, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.endpoint}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_and_metrics(random_server: Server) -> None:
    status, body = _get(random_server, "/health")
    assert status == 200 and '"status": "ok"' in body
    lmql.model("random", endpoint=random_server.endpoint).generate_sync("m", max_tokens=3)
    status, text = _get(random_server, "/metrics")
    assert status == 200
    assert read_metric(text, "lmql_tokens_generated") >= 3
    for name in ("lmql_active_sequences", "lmql_queue_depth", "lmql_step_seconds", "lmql_engine_steps"):
        read_metric(text, name)
    busy, waiting = read_metric(text, "lmql_engine_busy_seconds"), read_metric(text, "lmql_engine_device_wait_seconds")
    assert 0 < busy < 60 and 0 <= waiting <= busy  # the engine worked, and never longer than it ran
    # its busy time by phase of its loop: each phase there, the work in launching and reading
    # steps, and together no more than the busy time they divide (idle waits are in neither)
    phases = {phase: float(value) for phase, value in re.findall(
        r'^lmql_engine_phase_seconds_total{model="random",phase="(\w+)"} ([0-9.e+-]+)$', text, re.M)}
    assert set(phases) == {"launch", "deliver", "collect", "schedule"}, text
    assert phases["launch"] > 0 and phases["collect"] > 0 and min(phases.values()) >= 0
    assert sum(phases.values()) <= busy * 1.05 + 0.01, (phases, busy)
    # the loaded process is frozen out of the collector's walks; the collections still run, timed
    assert read_metric(text, "lmql_gc_frozen_objects", label=None) > 10_000
    assert read_metric(text, "lmql_gc_collections", "0", label="generation") > 0
    assert read_metric(text, "lmql_gc_pause_seconds", "0", label="generation") > 0


def test_disconnect_mid_stream_frees_the_sequences() -> None:
    server = Server("random")
    try:
        async def scenario() -> None:
            async with RawClient(server.endpoint) as c:
                for sid in range(1, 6):
                    await c.send("GENERATE", {"model": "random", "prompt": [sid], "stream_id": sid,
                                              "max_tokens": 60000})
                await c.frame()
            # leaving the block closed the socket in the middle of five long streams

        asyncio.run(scenario())
        wait_until(lambda: read_metric(_get(server, "/metrics")[1], "lmql_active_sequences") == 0, 10)
        metrics = _get(server, "/metrics")[1]
        assert read_metric(metrics, "lmql_sequences_cancelled") == 5
        generated = read_metric(metrics, "lmql_tokens_generated")
        time.sleep(0.5)
        assert read_metric(_get(server, "/metrics")[1], "lmql_tokens_generated") == generated  # nothing runs on
    finally:
        assert server.stop() == 0


def test_200_streams_over_20_connections(random_server: Server) -> None:
    async def connection(n: int) -> dict:
        async with RawClient(random_server.endpoint) as c:
            for sid in range(10):
                await c.send("GENERATE", {"model": "random", "prompt": [sid, 1], "stream_id": sid,
                                          "max_tokens": 25 + sid})
            return await c.collect(set(range(10)), timeout=120)

    async def scenario() -> list:
        return await asyncio.gather(*(connection(n) for n in range(20)))

    results = asyncio.run(scenario())
    for streams in results:
        for sid, entries in streams.items():
            assert len(entries) == 25 + sid
            assert [e["finish_reason"] for e in entries[:-1]] == [None] * (24 + sid)
            assert entries[-1]["finish_reason"] == "length"
            # same prompt on every connection: same tokens, so none were lost or reordered
            assert [e["token"] for e in entries] == [e["token"] for e in results[0][sid]]


# Rounds of 1-10 clients, each dropping its connection (0-50 ms after asking for 1-8 streams) or
# reading all its streams, for LMQL_SOAK_SECONDS (two minutes: the soak of a few minutes issue 7
# asks for), then the server's state checked. LMQL_SOAK_SECONDS=0 runs until this many clients have
# dropped and as many have read everything (~130 streams cancelled at random points, ~15 s): a drop
# that leaks a stream or kills the server shows within the first few, for a quick run.
SOAK_CLIENTS = 30


def test_soak_clients_connecting_and_dropping_at_random() -> None:
    seconds = float(os.environ.get("LMQL_SOAK_SECONDS", "120"))
    server = Server("random")
    rng = random.Random(1)
    completed = dropped = 0

    async def one_client() -> None:
        nonlocal completed, dropped
        async with RawClient(server.endpoint) as c:
            streams = {sid: rng.randint(1, 200) for sid in range(rng.randint(1, 8))}
            for sid, n in streams.items():
                await c.send("GENERATE", {"model": "random", "prompt": [sid + 1], "stream_id": sid,
                                          "max_tokens": n})
            if rng.random() < 0.5:  # drop the connection early
                await asyncio.sleep(rng.random() * 0.05)
                dropped += 1
                return
            done = await c.collect(set(streams), timeout=60)
            assert all(len(done[sid]) == n for sid, n in streams.items())
            completed += 1

    def going_on(deadline: float) -> bool:
        return time.monotonic() < deadline if seconds else min(completed, dropped) < SOAK_CLIENTS

    async def scenario() -> None:
        deadline = time.monotonic() + seconds
        while going_on(deadline):
            await asyncio.gather(*(one_client() for _ in range(rng.randint(1, 10))))

    try:
        asyncio.run(scenario())
        print(f"soak: {completed} clients read all their streams, {dropped} dropped theirs")
        assert completed > 0
        wait_until(lambda: read_metric(_get(server, "/metrics")[1], "lmql_active_sequences") == 0, 10)
        assert server.alive()
    finally:
        assert server.stop() == 0


def test_auth_token(token_server: Server) -> None:
    async def connect(headers: dict[str, str]) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"ws://{token_server.endpoint}/", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(connect({})) == 401
    assert asyncio.run(connect({"Authorization": "Bearer wrong"})) == 401
    assert asyncio.run(connect({"Authorization": "Bearer s3cret"})) == 101
    with pytest.raises(ConnectionLost, match="wants a token"):
        lmql.model("random", endpoint=token_server.endpoint, api_key="nope").generate_sync("x", max_tokens=1)
    assert lmql.model("random", endpoint=token_server.endpoint, api_key="s3cret").generate_sync("x", max_tokens=2)
    assert _get(token_server, "/metrics")[0] == 401
    assert _get(token_server, "/metrics", token="s3cret")[0] == 200
    assert _get(token_server, "/health")[0] == 200


def test_public_host_without_token_warns() -> None:
    server = Server("random", host="0.0.0.0")
    try:
        assert "without --auth-token" in server.output()
    finally:
        assert server.stop() == 0


def test_clients_cannot_load_other_models_or_pass_loader_arguments(random_server: Server) -> None:
    async def scenario() -> list:
        async with RawClient(random_server.endpoint) as c:
            await c.send("GENERATE", {"model": "gpt2", "prompt": [1], "stream_id": 1,
                                      "trust_remote_code": True})
            await c.send("GENERATE", {"model": "random", "prompt": [1], "stream_id": 2, "max_tokens": 2,
                                      "seed": 99, "vocab_size": 3})
            return list((await c.collect({1, 2})).values())

    refused, served = asyncio.run(scenario())
    assert "serves 'random', not 'gpt2'" in refused[0]["error"]
    assert len(served) == 2  # unknown fields are ignored, never handed to a loader
    info = lmql.model("random", endpoint=random_server.endpoint).model_info_sync()["model_info"]
    assert info["seed"] == 7 and info["vocab_size"] == 50257
