"""Hostile and broken input: each gets a clear error, and the server keeps serving everyone."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.attackers import http_status, upgrade_request
from tests.conftest import RawClient, Server

GOOD = {"model": "random", "prompt": [1, 2], "max_tokens": 3}
VOCAB = 50257


def _reply(server: Server, frame: str) -> list[dict]:
    async def scenario() -> list[dict]:
        async with RawClient(server.endpoint) as c:
            await c.send_raw(frame)
            command, payload = await c.frame()
            assert command == "TOKEN" and isinstance(payload, list)
            return payload

    return asyncio.run(scenario())


def _still_serves(server: Server) -> None:
    async def scenario() -> list[dict]:
        async with RawClient(server.endpoint) as c:
            await c.send("GENERATE", {**GOOD, "stream_id": 1})
            return await c.stream(1)

    assert len(asyncio.run(scenario())) == 3
    assert server.alive()


def _generate(**fields: object) -> str:
    body = {**GOOD, "stream_id": 5, **fields}
    return "GENERATE " + json.dumps({k: v for k, v in body.items() if v is not ...})


BAD_FRAMES = [
    ("", "a frame must be '<COMMAND> <json>'"),
    ("{\"prompt\": [1]}", "a frame must be '<COMMAND> <json>'"),
    ("FROBNICATE {\"stream_id\": 1}", "unknown command 'FROBNICATE'"),
    ("GENERATE {not json", "the body of GENERATE is not valid JSON"),
    ("GENERATE [1, 2, 3]", "the body of GENERATE must be a JSON object"),
    ("GENERATE " + "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("GENERATE", "the body of GENERATE must be a JSON object"),
    (_generate(stream_id=...), "'stream_id' must be an integer or a string"),
    (_generate(stream_id=[1]), "'stream_id' must be an integer or a string"),
    (_generate(stream_id=True), "'stream_id' must be an integer or a string"),
    (_generate(model=...), "'model' must name the served model"),
    (_generate(prompt=...), "'prompt' must be a list of token ids"),
    (_generate(prompt="hello"), "'prompt' must be a list of token ids"),
    (_generate(prompt=[]), "'prompt' must not be empty"),
    (_generate(prompt=[1, -5]), "'prompt' holds -5, not a token id in [0, 50257)"),
    (_generate(prompt=[1.5]), "'prompt' holds 1.5, not a token id"),
    (_generate(prompt=[VOCAB]), f"'prompt' holds {VOCAB}, not a token id"),
    (_generate(prompt=[[1]]), "'prompt' holds [1], not a token id"),
    (_generate(prompt=[1] * 5000), "the prompt has 5000 tokens; this model's context holds 2048"),
    (_generate(max_tokens=-1), "'max_tokens' must be between 1 and"),
    (_generate(max_tokens="ten"), "'max_tokens' must be an integer"),
    (_generate(max_tokens=10**30), "'max_tokens' must be between 1 and"),
    (_generate(max_tokens=2.5), "'max_tokens' must be an integer"),
    (_generate(temperature=-0.5), "'temperature' must not be negative"),
    ("GENERATE " + json.dumps({**GOOD, "stream_id": 5})[:-1] + ", \"temperature\": NaN}", "'temperature' must be a finite number"),
    (_generate(temperature="hot"), "'temperature' must be a finite number"),
    (_generate(logit_bias={"abc": 5}), "'logit_bias' key 'abc' is not a token id"),
    (_generate(logit_bias={"1.5": 5}), "'logit_bias' key '1.5' is not a token id"),
    (_generate(logit_bias={str(VOCAB + 3): 5}), f"'logit_bias' key {VOCAB + 3} is outside the vocabulary"),
    (_generate(logit_bias={"-1": 5}), "'logit_bias' key '-1' is not a token id"),
    # only plain decimal digits: Python's int() would read these as 7, 8 and 10 (issue 18, item 10)
    (_generate(logit_bias={" 7 ": 5}), "'logit_bias' key ' 7 ' is not a token id"),
    (_generate(logit_bias={"\u0668": 5}), "'logit_bias' key '\u0668' is not a token id"),
    (_generate(logit_bias={"1_0": 5}), "'logit_bias' key '1_0' is not a token id"),
    (_generate(logit_bias={"9" * 5000: 5}), "'logit_bias' key 9999999999"),
    (_generate(logit_bias={"3": "high"}), "'logit_bias' value for 3 must be a number"),
    (_generate(logit_bias=[1, 2]), "'logit_bias' must be an object"),
    (_generate(top_logprobs=10**6), "'top_logprobs' must be between 0 and 100"),
    (_generate(top_logprobs="all"), "'top_logprobs' must be an integer"),
    (_generate(presence_penalty=0.5), "'presence_penalty' is not supported by this server (yet)"),
    (_generate(top_p=1.5), "'top_p' must be in (0.0, 1.0], got 1.5"),
    (_generate(top_p="most"), "'top_p' must be a finite number"),
    (_generate(top_k=-1), "'top_k' must be between 0 and 50257, got -1"),
    (_generate(repetition_penalty=0), "'repetition_penalty' must be in (0.0, 1000000.0], got 0"),
    ("SCORE " + json.dumps({"model": "random", "prompt": [1], "stream_id": 2}), "'scored' must be a list"),
    ("SCORE " + json.dumps({"model": "random", "prompt": [1], "scored": [], "stream_id": 2}), "'scored' must not be empty"),
    ("SCORE " + json.dumps({"model": "random", "prompt": [], "scored": [1], "stream_id": 2}), "'prompt' must not be empty"),
    ("SCORE " + json.dumps({"model": "random", "prompt": [1], "scored": [-1], "stream_id": 2}), "'scored' holds -1"),
    ("MODEL_INFO " + json.dumps({"model": "nope", "stream_id": 3}), "this server serves 'random', not 'nope'"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_FRAMES, ids=[m[:40] for _, m in BAD_FRAMES])
def test_bad_frame_gets_an_error_and_the_server_lives_on(random_server: Server, frame: str, message: str) -> None:
    [entry] = _reply(random_server, frame)
    assert message in entry["error"]
    _still_serves(random_server)


def test_error_entry_names_the_stream(random_server: Server) -> None:
    [entry] = _reply(random_server, _generate(max_tokens=-1))
    assert entry["stream_id"] == 5


def test_binary_frames_are_refused(random_server: Server) -> None:
    async def scenario() -> list[dict]:
        async with RawClient(random_server.endpoint) as c:
            await c.ws.send_bytes(b"GENERATE {}")
            return (await c.frame())[1]

    [entry] = asyncio.run(scenario())
    assert "binary frames are not supported" in entry["error"]
    _still_serves(random_server)


def test_oversized_frame_closes_only_that_connection() -> None:
    server = Server("random", "--max-frame-bytes", "100000")
    try:
        async def scenario() -> aiohttp.WSMessage:
            async with RawClient(server.endpoint) as c:
                await c.send("GENERATE", {**GOOD, "stream_id": 1, "prompt": [1] * 50_000})
                return await asyncio.wait_for(c.ws.receive(), 10)

        msg = asyncio.run(scenario())
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        _still_serves(server)
    finally:
        assert server.stop() == 0


def test_duplicate_stream_id_on_one_connection(random_server: Server) -> None:
    async def scenario() -> list[dict]:
        async with RawClient(random_server.endpoint) as c:
            await c.send("GENERATE", {**GOOD, "stream_id": 1, "max_tokens": 2000})
            await c.send("GENERATE", {**GOOD, "stream_id": 1})
            errors: list[dict] = []
            while not errors:
                _, payload = await c.frame()
                errors = [e for e in payload if "error" in e]
            return errors

    [entry] = asyncio.run(scenario())
    assert "stream 1 is already running on this connection" in entry["error"]


@pytest.mark.parametrize("frame", [
    _generate(model="m" * 100_000),
    "X" * 100_000 + " {}",
    _generate(logit_bias={"k" * 100_000: 1}),
    _generate(logit_bias={"9" * 100_000: 1}),
])
def test_errors_do_not_echo_long_names_back(random_server: Server, frame: str) -> None:
    [entry] = _reply(random_server, frame)
    assert len(entry["error"]) < 300, entry["error"][:300]
    _still_serves(random_server)


def _tokens(server: Server, **fields: object) -> list[dict]:
    async def scenario() -> list[dict]:
        async with RawClient(server.endpoint) as c:
            await c.send("GENERATE", {**GOOD, "stream_id": 1, "prompt": [464, 3797], "max_tokens": 3, **fields})
            return await c.stream(1)

    return asyncio.run(scenario())


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-39, 1e-8])
def test_tiny_temperatures_decode_greedily(random_server: Server, temperature: float) -> None:
    greedy = [e["token"] for e in _tokens(random_server)]
    assert [e["token"] for e in _tokens(random_server, temperature=temperature)] == greedy
    assert greedy != [0, 0, 0]


def test_banning_every_token_is_an_error_for_that_stream(random_server: Server) -> None:
    [entry] = _tokens(random_server, logit_bias={str(t): -100 for t in range(VOCAB)})
    assert "no token can be chosen" in entry["error"]
    _still_serves(random_server)


@pytest.mark.parametrize(("header", "status"), [
    (b"Authorization: Bearer \xff\xfe\r\n", 401),  # not UTF-8
    (b"Authorization: \xc3\x28 s3cret\r\n", 401),
    (b"Authorization: Basic s3cret\r\n", 401),
    (b"Authorization: bearer s3cret\r\n", 101),  # the scheme is case-insensitive (RFC 9110)
    (b"Authorization: BEARER s3cret\r\n", 101),
])
def test_authorization_header_bytes(token_server: Server, header: bytes, status: int) -> None:
    assert http_status(token_server.endpoint, upgrade_request(token_server.endpoint, header)) == status
    assert token_server.alive()
