"""The constraints extension over LMTP: a real `lmql serve-model lmql-tiny`, a raw websocket.

A GENERATE may carry ``regex``, ``grammar`` or ``json_schema``; outputs are checked with ``re``,
``json`` and transformers' greedy decode under an independent mask (test_constraints_engine);
bad constraints end their own stream with an error entry, and nothing else."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from tests.conftest import RawClient, Server, server_metric
from tests.test_constraints_engine import DATE, PROMPT, reference_greedy

pytestmark = pytest.mark.hf
MODEL = "lmql-tiny"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    return JsonTokenizer.from_file(bundled_path(MODEL) / "tokenizer.json")  # type: ignore[operator]


def generate(client: RawClient, stream_id: Any, prompt: list[int], **fields: Any) -> Any:
    return client.send("GENERATE", {"model": MODEL, "stream_id": stream_id, "prompt": prompt, **fields})


def tokens_of(entries: list[dict[str, Any]]) -> list[int]:
    assert "error" not in entries[-1], entries[-1]
    return [e["token"] for e in entries]


def test_model_info_advertises_the_constraints(tiny_server: Server) -> None:
    async def scenario() -> Any:
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("MODEL_INFO", {"model": MODEL, "stream_id": 0})
            return (await client.frame())[1][0]["model_info"]["extensions"]

    assert asyncio.run(scenario())["constraints"] == ["regex", "grammar", "json_schema"]


def test_constrained_streams_over_the_socket(tiny_server: Server, tokenizer: Any) -> None:
    prompt = tokenizer.encode(PROMPT)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "score": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "score"], "additionalProperties": False}
    grammar = 'start: "Name: " NAME "\\nAge: " /[0-9]{1,2}/\nNAME: /[A-Z][a-z]{1,8}/'

    async def scenario() -> Any:
        async with RawClient(tiny_server.endpoint) as client:
            await generate(client, "date", prompt, regex=DATE, max_tokens=40)
            await generate(client, "json", prompt, json_schema=schema, max_tokens=60)
            await generate(client, "lark", prompt, grammar=grammar, max_tokens=40)
            return await client.collect({"date", "json", "lark"})

    got = asyncio.run(scenario())
    date = tokenizer.decode(tokens_of(got["date"]))
    assert date == reference_greedy(tokenizer, prompt, DATE)
    assert got["date"][-1]["finish_reason"] == "stop"
    value = json.loads(tokenizer.decode(tokens_of(got["json"])))
    import jsonschema
    jsonschema.validate(value, schema)
    assert re.fullmatch(r"Name: [A-Z][a-z]{1,8}\nAge: [0-9]{1,2}", tokenizer.decode(tokens_of(got["lark"])))


BAD = [
    ({"regex": "("}, "invalid regex"),
    ({"grammar": "start: A\nA: /a/&/b/"}, "matches nothing"),
    ({"grammar": "start: /a/ & /b/"}, "invalid grammar"),
    ({"json_schema": "{oops"}, "not valid JSON"),
    ({"json_schema": 7}, "must be a string or an object"),
    ({"regex": "a", "grammar": "start: 'a'"}, "at most one of"),
    ({"regex": "(a{1000}){1000}", "max_tokens": 3000}, "too many expressions"),  # fails while followed
    ({"regex": "a", "fast_forward": "no"}, "'fast_forward' must be true or false"),
]


def test_fast_forward_off_samples_forced_text(tiny_server: Server, tokenizer: Any) -> None:
    """Forced text comes as tokens sampled one by one, a step each (the engine's step count),
    not appended in one; the text is the same."""
    grammar = 'start: "The answer, after a long and careful deliberation, is " /[0-9]/'

    async def one(**fields: Any) -> tuple[list[dict[str, Any]], float]:
        before = server_metric(tiny_server, "lmql_engine_steps", MODEL)
        async with RawClient(tiny_server.endpoint) as client:
            await generate(client, "s", tokenizer.encode(PROMPT), grammar=grammar, max_tokens=40, **fields)
            entries = await client.stream("s")
        return entries, server_metric(tiny_server, "lmql_engine_steps", MODEL) - before

    forwarded, ff_steps = asyncio.run(one())
    sampled, sampled_steps = asyncio.run(one(fast_forward=False))
    texts = [tokenizer.decode(tokens_of(entries))[:-1] for entries in (forwarded, sampled)]
    assert texts == ["The answer, after a long and careful deliberation, is "] * 2
    assert sampled_steps >= len(sampled) and ff_steps < len(forwarded) / 2


def test_bad_constraints_end_their_own_stream_only(tiny_server: Server, tokenizer: Any) -> None:
    prompt = tokenizer.encode(PROMPT)

    async def scenario() -> Any:
        async with RawClient(tiny_server.endpoint) as client:
            await generate(client, "alone", prompt, max_tokens=16)
            alone = await client.stream("alone")
            await generate(client, "free", prompt, max_tokens=16)
            for i, (fields, _) in enumerate(BAD):
                await generate(client, i, prompt, **fields)
            started = time.perf_counter()
            got = await client.collect({"free", *range(len(BAD))})
            return alone, got, time.perf_counter() - started

    alone, got, seconds = asyncio.run(scenario())
    for i, (_, message) in enumerate(BAD):
        assert len(got[i]) >= 1 and message in got[i][-1].get("error", ""), (i, got[i][-1])
    assert tokens_of(got["free"]) == tokens_of(alone)
    assert seconds < 30
    assert tiny_server.alive()
