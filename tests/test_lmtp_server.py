"""The LMTP server as a real process: frames, many streams and clients, SCORE, MODEL_INFO."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import pytest

import lmql
from tests.conftest import RawClient, Server


def test_generate_streams_token_lists_in_order(random_server: Server) -> None:
    async def scenario() -> None:
        async with RawClient(random_server.endpoint) as c:
            await c.send("GENERATE", {"model": "random", "prompt": [1, 2, 3], "stream_id": 1,
                                      "max_tokens": 12, "temperature": 0.0, "top_logprobs": 3})
            entries = await c.stream(1)
        assert len(entries) == 12
        assert [e["finish_reason"] for e in entries] == [None] * 11 + ["length"]
        for e in entries:
            assert set(e) == {"token", "stream_id", "logprob", "finish_reason", "top_logprobs"}
            top = {int(k): v for k, v in e["top_logprobs"].items()}
            assert e["token"] in top and top[e["token"]] == e["logprob"]
            # greedy: the chosen token is the most likely one
            assert e["logprob"] == max(top.values())
            assert list(top.values()) == sorted(top.values(), reverse=True)

    asyncio.run(scenario())


def test_many_interleaved_streams_on_one_connection(random_server: Server) -> None:
    prompts = {sid: [sid, sid + 1, 7] for sid in range(1, 33)}

    async def scenario() -> dict:
        async with RawClient(random_server.endpoint) as c:
            for sid, prompt in prompts.items():
                await c.send("GENERATE", {"model": "random", "prompt": prompt, "stream_id": sid,
                                          "max_tokens": 20})
            return await c.collect(set(prompts))

    served = asyncio.run(scenario())
    local = lmql.model("local:random", seed=7)
    for sid, prompt in prompts.items():
        tokens = [e["token"] for e in served[sid]]
        expected = asyncio.run(_local_tokens(local, prompt, 20))
        assert tokens == expected, sid


async def _local_tokens(llm: lmql.LLM, prompt: list[int], max_tokens: int) -> list[int]:
    from lmql_core.lmtp.client.loop import run_async

    async def run() -> list[int]:
        request = {"model": "random", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return [e["token"] async for e in llm.client.request("GENERATE", request)]

    return await run_async(run())


def test_several_clients_concurrently(random_server: Server) -> None:
    async def one_client(n: int) -> list[list[int]]:
        async with RawClient(random_server.endpoint) as c:
            for sid in range(1, 9):
                await c.send("GENERATE", {"model": "random", "prompt": [sid, 3], "stream_id": sid,
                                          "max_tokens": 15})
            streams = await c.collect(set(range(1, 9)))
            return [[e["token"] for e in streams[sid]] for sid in range(1, 9)]

    async def scenario() -> list:
        return await asyncio.gather(*(one_client(n) for n in range(6)))

    results = asyncio.run(scenario())
    assert all(len(tokens) == 15 for tokens in results[0])
    assert len({tuple(tokens) for tokens in results[0]}) == 8  # different prompts, different tokens
    # the same prompts on other connections, at the same time, give the same greedy tokens
    assert all(streams == results[0] for streams in results)


def test_score_returns_one_entry_per_scored_token(random_server: Server) -> None:
    async def scenario() -> list:
        async with RawClient(random_server.endpoint) as c:
            await c.send("SCORE", {"model": "random", "prompt": [5, 6], "scored": [7, 8, 9], "stream_id": 4})
            return await c.stream(4)

    entries = asyncio.run(scenario())
    assert [e["token"] for e in entries] == [7, 8, 9]
    assert [e["finish_reason"] for e in entries] == [None, None, "stop"]
    assert all(e["logprob"] < 0 for e in entries)
    local = lmql.model("local:random", seed=7).score_sync("\x05\x06", ["\x07\x08\x09"])
    assert local.token_scores[0] == pytest.approx([e["logprob"] for e in entries], abs=1e-6)


def test_model_info_answers_with_msg_list(random_server: Server) -> None:
    async def scenario() -> tuple:
        async with RawClient(random_server.endpoint) as c:
            await c.send("MODEL_INFO", {"stream_id": 9, "model": "random", "data": {"model": "random"}})
            return await c.frame()

    command, payload = asyncio.run(scenario())
    assert command == "MSG" and isinstance(payload, list)
    info = payload[0]["model_info"]
    assert payload[0]["stream_id"] == 9
    assert info["backend"] == "random" and info["seed"] == 7 and info["vocab_size"] == 50257


def test_static_server_refuses_other_models(random_server: Server) -> None:
    async def scenario() -> list:
        async with RawClient(random_server.endpoint) as c:
            await c.send("GENERATE", {"model": "gpt2", "prompt": [1], "stream_id": 2, "max_tokens": 2})
            return await c.stream(2)

    [entry] = asyncio.run(scenario())
    assert "serves 'random', not 'gpt2'" in entry["error"]
    assert "--load-on-demand" in entry["error"]


def test_eos_finishes_with_stop() -> None:
    # a two-token vocabulary whose EOS is token 1: greedy decoding soon picks it
    server = Server("random", "--vocab_size", "2", "--eos_token_id", "1", "--seed", "3")
    try:
        async def scenario() -> list:
            async with RawClient(server.endpoint) as c:
                await c.send("GENERATE", {"model": "random", "prompt": [0], "stream_id": 1,
                                          "max_tokens": 500, "logit_bias": {"0": -100}})
                return await c.stream(1)

        [entry] = asyncio.run(scenario())
        assert entry["token"] == 1 and entry["finish_reason"] == "stop"
    finally:
        assert server.stop() == 0


def test_sigterm_ends_open_streams_and_exits_zero() -> None:
    server = Server("random")

    async def scenario() -> list:
        async with RawClient(server.endpoint) as c:
            await c.send("GENERATE", {"model": "random", "prompt": [1], "stream_id": 1, "max_tokens": 60000})
            await c.frame()
            server.proc.terminate()
            entries = []
            while True:
                msg = await asyncio.wait_for(c.ws.receive(), 30)
                if msg.type != aiohttp.WSMsgType.TEXT:  # the server closed the socket
                    return entries
                entries.extend(json.loads(msg.data.partition(" ")[2]))

    entries = asyncio.run(scenario())
    assert server.stop() == 0
    assert any("shutting down" in e.get("error", "") for e in entries)


def test_load_on_demand_serves_other_models_with_default_arguments() -> None:
    server = Server("random", "--load-on-demand")
    try:
        async def scenario() -> tuple:
            async with RawClient(server.endpoint) as c:
                await c.send("GENERATE", {"model": "random:second", "prompt": [1, 2], "stream_id": 1,
                                          "max_tokens": 4})
                entries = await c.stream(1)
                await c.send("MODEL_INFO", {"model": "random:second", "stream_id": 2})
                _, info = await c.frame()
                return entries, info

        entries, [info] = asyncio.run(scenario())
        assert len(entries) == 4 and entries[-1]["finish_reason"] == "length"
        assert info["model"] == "random:second" and info["model_info"]["backend"] == "random"
        assert info["model_info"]["loader_kwargs"] == {"cuda": "False", "dtype": "None"}
    finally:
        assert server.stop() == 0


def test_steps_waiting_for_a_busy_loop_leave_in_one_frame_in_order() -> None:
    """While the event loop is busy, the engine's next steps wait in the session's outbox and go
    out together: fewer, larger TOKEN frames, every stream's tokens still in order."""
    from lmql_core.lmtp.server.session import Session
    from lmql_core.loading.identifiers import parse_model_id
    from lmql_core.loading.model_host import ModelHost, load_model

    async def run(block_s: float) -> list[list[dict]]:
        host = ModelHost()
        host.add(load_model(parse_model_id("random")))
        frames: list[list[dict]] = []
        finished = asyncio.Event()

        def send(command: str, payload: list[dict]) -> None:
            frames.append(payload)
            if sum(e["finish_reason"] is not None for f in frames for e in f) == 3:
                finished.set()

        session = Session(host, send)
        for sid in (1, 2, 3):
            await session.handle("GENERATE", {"model": "random", "prompt": [sid, 5], "stream_id": sid,
                                              "max_tokens": 40, "temperature": 0.0})
        time.sleep(block_s)  # the loop is stuck; the engine goes on generating
        await asyncio.wait_for(finished.wait(), 30)
        for model in host.models.values():
            model.engine.stop()
        return frames

    free, blocked = asyncio.run(run(0.0)), asyncio.run(run(0.5))
    assert len(blocked) < 10 <= len(free)  # 40 steps, taken out in a few frames when the loop lags
    for sid in (1, 2, 3):
        tokens = [[e["token"] for f in frames for e in f if e["stream_id"] == sid] for frames in (free, blocked)]
        assert tokens[0] == tokens[1] and len(tokens[0]) == 40
    assert any(sum(e["stream_id"] == 1 for e in frame) > 1 for frame in blocked)


def test_a_burst_of_requests_to_an_idle_engine_shares_one_step() -> None:
    """Clients send a burst as one frame per request; an idle engine waits for the burst to end
    (no request for 1 ms, at most 5 ms) so the whole burst is prefilled in one step."""
    from lmql_core.builtin.random_backend import RandomBackend
    from lmql_core.engine.engine import ARRIVAL_QUIET_S, Engine
    from lmql_core.engine.sequence import Finish, SamplingParams, Sequence

    engine = Engine(RandomBackend(vocab_size=512, eos_token_id=1))
    checked = 0
    try:
        for burst in range(6):
            done: list[Finish] = []

            def sink(events: list, done: list[Finish] = done) -> None:
                done.extend(e.finish_reason for e in events)

            steps, arrivals = engine.stats.steps, []
            for i in range(8):
                engine.submit(Sequence(100 * burst + i, [i + 2, 7], SamplingParams(max_tokens=1), sink))
                arrivals.append(time.perf_counter())
                time.sleep(0.0002)  # 0.2 ms apart, as frames parsed one by one
            deadline = time.monotonic() + 10
            while len(done) < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert done == [Finish.LENGTH] * 8
            if max(b - a for a, b in itertools.pairwise(arrivals)) < 0.8 * ARRIVAL_QUIET_S:
                assert engine.stats.steps - steps == 1  # (a loaded machine may sleep longer: not checked)
                checked += 1
        assert checked >= 2
    finally:
        engine.stop()


def test_requests_sent_one_at_a_time_start_at_once_and_a_burst_brings_the_wait_back() -> None:
    """A client that sends one request after another's end (one program after another) finds the
    engine idle each time: after the first, whose companions it waits for, none waits (1 ms of
    a short program). A burst after them starts without waiting too, but it is seen to be one:
    the next burst waits for its companions again and shares one step."""
    from lmql_core.builtin.random_backend import RandomBackend
    from lmql_core.engine.engine import ARRIVAL_QUIET_S, ARRIVAL_WINDOW_S, Engine
    from lmql_core.engine.sequence import SamplingParams, Sequence

    engine = Engine(RandomBackend(vocab_size=512, eos_token_id=1))

    def run(ids: range, max_tokens: int) -> tuple[float, float]:
        """Submit ``ids`` together, wait for their ends; the longest gap between two submissions,
        and the time from the first to the last."""
        ended: list[int] = []

        def sink(events: list) -> None:
            ended.extend(e.stream_id for e in events if e.finish_reason is not None)

        arrivals = []
        for i in ids:
            engine.submit(Sequence(i, [i % 500 + 2, 7], SamplingParams(max_tokens=max_tokens), sink))
            arrivals.append(time.perf_counter())
        deadline = time.monotonic() + 10
        while len(ended) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sorted(ended) == list(ids)
        return max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0), arrivals[-1] - arrivals[0]

    checked = 0
    try:
        for attempt in range(5):  # (a loaded machine may pause the submitting thread: tried again)
            waits = engine.stats.arrival_waits
            for i in range(5):
                run(range(1000 * attempt + i, 1000 * attempt + i + 1), 2)
                assert engine.stats.arrival_waits == waits + (attempt == 0)  # the very first waited, alone
            waits = engine.stats.arrival_waits
            # submitted together: the engine is busy with the first meanwhile
            _, span = run(range(1000 * attempt + 100, 1000 * attempt + 108), 20)
            assert engine.stats.arrival_waits == waits
            steps = engine.stats.steps
            gap, _ = run(range(1000 * attempt + 200, 1000 * attempt + 208), 1)
            # the burst was counted whole, and the engine woke within ARRIVAL_QUIET_S of the last
            # request (a loaded machine may wake it later: then it rightly waits for no more)
            if span < 0.8 * ARRIVAL_WINDOW_S and engine.stats.arrival_waits == waits + 1:
                if gap < 0.8 * ARRIVAL_QUIET_S:
                    assert engine.stats.steps - steps == 1
                checked += 1
                break
        assert checked
    finally:
        engine.stop()


def test_frames_go_uncompressed_even_when_a_client_offers_deflate(random_server: Server) -> None:
    """aiohttp clients (LMQL's too) offer per-message deflate; on local sockets it only costs CPU."""

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://{random_server.endpoint}/", compress=15) as ws:
            assert ws.compress == 0
            await ws.send_str('GENERATE {"model": "random", "prompt": [1, 2], "stream_id": 1, "max_tokens": 2}')
            frame = await ws.receive_str(timeout=10)
            assert frame.startswith("TOKEN [")

    asyncio.run(scenario())


def test_more_connections_than_the_batch_holds_are_all_answered() -> None:
    """Six connections send a request each at once to an idle server whose batch holds two:
    every stream gets its tokens (the engine thread once died here, and the server with it
    answered nothing more), and the server still answers afterwards."""
    server = Server("random", "--max_batch", "2")

    async def one(sid: int) -> list:
        async with RawClient(server.endpoint) as c:
            await c.send("GENERATE", {"model": "random", "prompt": [5, 6, sid], "max_tokens": 5, "stream_id": sid})
            return await c.stream(sid)

    async def all_at_once() -> list:
        return await asyncio.gather(*(one(sid) for sid in range(6)))

    try:
        for streams in (asyncio.run(all_at_once()), [asyncio.run(one(9))]):
            for entries in streams:
                assert [e.get("error") for e in entries] == [None] * 5
                assert entries[-1]["finish_reason"] == "length"
    finally:
        assert server.stop() == 0, server.output()
