"""The ``openai:`` transport passes constraints to the server as structured outputs: ``generate``'s
``regex``/``grammar``/``json_schema`` and the query variables that go server-side over LMTP
(query/server_side.py) run as one constrained completion against our server's OpenAI endpoint.
Expected values: transformers' greedy decode under independently computed masks
(test_constraints_engine.reference_greedy, test_constraints_query.reference_choice), ``re``,
``json`` and ``jsonschema``. A server that does not follow them is tested in
test_openai_structured_llamacpp.py."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import lmql
from lmql_core.errors import LMQLError, ServerError
from lmql_core.lmtp.client.loop import run_sync
from lmql_core.openai_compat.client_features import ServerFeatureWarning
from tests.conftest import Server, free_port
from tests.test_constraints_engine import DATE, reference_greedy
from tests.test_constraints_query import DAYS, PROMPT, program, reference_choice, sequences, tokenizer

pytestmark = pytest.mark.hf
__all__ = ["tokenizer"]  # a fixture
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Zurich", "Tokyo"]},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "days"], "additionalProperties": False}


def over_openai(server: Server) -> Any:
    return lmql.model("openai:lmql-tiny", endpoint=f"http://{server.endpoint}/v1")


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode(text, add_special_tokens=False)


def test_the_server_is_probed_once_and_follows_every_kind(tiny_server: Server) -> None:
    llm = over_openai(tiny_server)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing lacking: no warning
        info = llm.model_info_sync()["model_info"]
    assert info["extensions"]["constraints"] == ["regex", "grammar", "json_schema"]
    before = sequences(tiny_server)
    assert over_openai(tiny_server).model_info_sync()["model_info"] == info  # the same client: no probe again
    assert sequences(tiny_server) == before


def test_generate_with_a_regex_gives_the_reference_text(tiny_server: Server, tokenizer: Any) -> None:
    expected = reference_greedy(tokenizer, prompt_ids(tokenizer, PROMPT), DATE)
    assert over_openai(tiny_server).generate_sync(PROMPT, max_tokens=40, regex=DATE) == expected


def test_generate_with_a_json_schema_and_a_grammar(tiny_server: Server) -> None:
    import jsonschema

    llm = over_openai(tiny_server)
    text = llm.generate_sync("A trip: ", max_tokens=40, json_schema=SCHEMA)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert llm.generate_sync(PROMPT, max_tokens=10, grammar='start: " on " ("Monday" | "Friday")') in (
        " on Monday", " on Friday")


@pytest.mark.parametrize("pattern", [DATE, DAYS])
def test_a_regex_variable_keeps_the_client_masks(tiny_server: Server, tokenizer: Any, pattern: str) -> None:
    """llguidance allows only the canonical tokens of text a regex forces (after "M" of "Monday",
    "ond" but not "o"), LMQL every token that keeps a match possible: over a structured-outputs
    server a REGEX variable stays on client masks (a request per mask change), with LMQL's value."""
    expected = reference_greedy(tokenizer, prompt_ids(tokenizer, PROMPT), pattern)
    llm = over_openai(tiny_server)
    llm.model_info_sync()  # the probe, before counting
    before = sequences(tiny_server)
    assert lmql.run_sync(program(f'REGEX(D, r"{pattern}")'), model=llm).variables["D"] == expected
    assert sequences(tiny_server) - before > 1


def test_an_in_list_is_one_request_with_the_client_masks_result(tiny_server: Server, tokenizer: Any) -> None:
    options = ["Monday", "Tuesday", "Mon", "next week", "the big room", "the bigger room"]
    expected = reference_choice(tokenizer, prompt_ids(tokenizer, PROMPT), options)
    llm = over_openai(tiny_server)
    llm.model_info_sync()
    before = sequences(tiny_server)
    assert lmql.run_sync(program(f"D in {options!r}"), model=llm).variables["D"] == expected
    assert sequences(tiny_server) - before == 1


def test_a_clause_the_server_cannot_take_whole_stays_on_the_client(tiny_server: Server) -> None:
    llm = over_openai(tiny_server)
    llm.model_info_sync()
    before = sequences(tiny_server)
    value = lmql.run_sync(program(f'REGEX(D, r"{DATE}") or REGEX(D, r"[a-z]{{3}}")'), model=llm).variables["D"]
    # a request per mask change; the server counts a request the client closed once it has read
    # the cancel, which may come after run_sync returned
    deadline = time.monotonic() + 10
    while sequences(tiny_server) - before <= 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sequences(tiny_server) - before > 1
    assert re.fullmatch(DATE, value) or re.fullmatch("[a-z]{3}", value)


def test_a_constraint_the_server_refuses_is_the_streams_error(tiny_server: Server) -> None:
    llm = over_openai(tiny_server)
    with pytest.raises(ServerError, match="400.*regex"):
        llm.generate_sync(PROMPT, max_tokens=5, regex="([0-9]")
    with pytest.raises(ServerError, match="400.*grammar"):
        llm.generate_sync(PROMPT, max_tokens=5, grammar="start: (")
    assert llm.generate_sync(PROMPT, max_tokens=12, regex=DATE)  # the server lives on


def test_two_constraints_at_once_are_refused(tiny_server: Server) -> None:
    llm = over_openai(tiny_server)

    async def both() -> list[Any]:
        ids = await llm.encode_prompt_async(PROMPT)
        return [e async for e in llm.token_stream(ids, 5, 0.0, None, regex=DATE, grammar='start: "x"')]

    with pytest.raises(LMQLError, match="at most one of regex, grammar, json_schema"):
        run_sync(both())


def test_fast_forward_off_samples_forced_text_and_a_bad_one_is_a_400(tiny_server: Server) -> None:
    from tests.openai_fixtures import client, openai

    fields = {"structured_outputs": {"regex": DATE}}
    off = client(tiny_server).completions.create(model="lmql-tiny", prompt=PROMPT, temperature=0, max_tokens=40,
                                                 extra_body={**fields, "fast_forward": False})
    assert re.fullmatch(DATE, off.choices[0].text)
    with pytest.raises(openai.BadRequestError, match="'fast_forward' must be true or false"):
        client(tiny_server).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=4,
                                               extra_body={**fields, "fast_forward": "no"})


class ResponseFormatOnly:
    """A relay on loopback to our server's OpenAI endpoint that drops vLLM's fields
    (``structured_outputs``, ``guided_*``), as an OpenAI-style server ignoring unknown fields
    would: only ``response_format`` (JSON schema) constrains through it."""

    DROPPED = ("structured_outputs", "guided_regex", "guided_grammar", "guided_json", "guided_choice")

    def __init__(self, upstream: str) -> None:
        self.upstream = f"http://{upstream}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> Any:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._relay)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def _relay(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        body = await request.json() if request.method == "POST" else None
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in self.DROPPED}
        async with aiohttp.ClientSession() as session, \
                session.request(request.method, self.upstream + request.path, json=body) as answer:
            relayed = web.StreamResponse(status=answer.status,
                                         headers={"Content-Type": answer.headers["Content-Type"]})
            await relayed.prepare(request)
            async for chunk in answer.content.iter_any():
                await relayed.write(chunk)
            await relayed.write_eof()
            return relayed

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture(scope="module")
def response_format_only(tiny_server: Server) -> Iterator[ResponseFormatOnly]:
    relay = ResponseFormatOnly(tiny_server.endpoint)
    yield relay
    relay.close()


def test_a_server_with_response_format_only_gets_json_schemas_that_way(
        response_format_only: ResponseFormatOnly, tiny_server: Server, tokenizer: Any) -> None:
    import jsonschema

    llm = lmql.model("openai:lmql-tiny", endpoint=response_format_only.base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert llm.model_info_sync()["model_info"]["extensions"]["constraints"] == ["json_schema"]
        text = llm.generate_sync("A trip: ", max_tokens=40, json_schema=SCHEMA)
        with pytest.raises(LMQLError, match="does not follow regex constraints"):
            llm.generate_sync(PROMPT, max_tokens=12, regex=DATE)
    said = [str(w.message) for w in caught if issubclass(w.category, ServerFeatureWarning)]
    assert len(said) == 1 and "does not follow regex, grammar constraints" in said[0]
    jsonschema.validate(json.loads(text), SCHEMA)
    assert text == over_openai(tiny_server).generate_sync("A trip: ", max_tokens=40, json_schema=SCHEMA)
    # a REGEX variable: client masks through the relay, the reference's value
    expected = reference_greedy(tokenizer, prompt_ids(tokenizer, PROMPT), DATE)
    assert lmql.run_sync(program(f'REGEX(D, r"{DATE}")'), model=llm).variables["D"] == expected
