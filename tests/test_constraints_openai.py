"""Structured outputs on OpenAI's HTTP API, driven by the official `openai` client: OpenAI's
``response_format`` and vLLM's ``structured_outputs`` (``regex``, ``choice``, ``grammar``,
``json``) run as the engine's constraints. Texts are checked against transformers' greedy decode
under an independent mask (test_constraints_engine), ``re``, ``json`` and ``jsonschema``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import Server
from tests.openai_fixtures import TOKEN, client, openai
from tests.test_constraints_engine import DATE, PROMPT, reference_greedy

pytestmark = pytest.mark.hf
MODEL = "lmql-tiny"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Zurich", "Tokyo"]},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "days"], "additionalProperties": False}


def guarded_name(server: Server) -> str:
    return str(client(server, TOKEN).models.list().data[0].id)


def complete(server: Server, **fields: Any) -> Any:
    return client(server).completions.create(model=MODEL, prompt=PROMPT, temperature=0, **fields).choices[0]


def test_regex_as_vllm_asks_gives_the_reference_text(tiny: Server) -> None:
    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    tokenizer = JsonTokenizer.from_file(bundled_path(MODEL) / "tokenizer.json")  # type: ignore[operator]
    prompt = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    expected = reference_greedy(tokenizer, prompt + tokenizer.encode(PROMPT, add_special_tokens=False), DATE)
    choice = complete(tiny, max_tokens=40, extra_body={"structured_outputs": {"regex": DATE}})
    assert (choice.text, choice.finish_reason) == (expected, "stop")
    legacy = complete(tiny, max_tokens=40, extra_body={"guided_regex": DATE})
    assert legacy.text == expected


def test_response_format_json_schema(tiny: Server) -> None:
    import jsonschema
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True}}
    choice = complete(tiny, max_tokens=40, extra_body={"response_format": fmt})  # as vLLM takes it
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.text), SCHEMA)
    streamed = client(tiny).completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=40,
                                               extra_body={"response_format": fmt}, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == choice.text


def test_chat_with_response_format(guarded: Server) -> None:
    import jsonschema
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}}
    answer = client(guarded, TOKEN).chat.completions.create(
        model=guarded_name(guarded), messages=[{"role": "user", "content": "Plan a trip."}], temperature=0,
        max_tokens=40, response_format=fmt)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_choice_and_grammar(tiny: Server) -> None:
    obj = complete(tiny, max_tokens=200, extra_body={"response_format": {"type": "json_object"}})
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict)
    options = ["red", "green", "light blue"]
    picked = complete(tiny, max_tokens=10, extra_body={"structured_outputs": {"choice": options}})
    assert picked.text in options and picked.finish_reason == "stop"
    grammar = 'start: "Answer: " ("yes" | "no") "."'
    answer = complete(tiny, max_tokens=10, extra_body={"structured_outputs": {"grammar": grammar}})
    assert re.fullmatch(r"Answer: (yes|no)\.", answer.text)


@pytest.mark.parametrize(("fields", "words"), [
    ({"extra_body": {"structured_outputs": {"regex": "([0-9]"}}}, "invalid regex"),
    ({"extra_body": {"structured_outputs": {"grammar": "start: A\nA: /a/&/b/"}}}, "matches nothing"),
    ({"extra_body": {"structured_outputs": {"regex": "a", "choice": ["b"]}}}, "one structured output"),
    ({"extra_body": {"structured_outputs": {"structural_tag": "x"}}}, "not supported"),
    ({"extra_body": {"structured_outputs": {"choice": []}}}, "non-empty list"),
    ({"extra_body": {"response_format": {"type": "yaml"}}}, "'response_format' must be"),
    ({"extra_body": {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}},
     "must be a JSON schema"),
])
def test_bad_structured_outputs_are_400(tiny: Server, fields: dict[str, Any], words: str) -> None:
    with pytest.raises(openai.BadRequestError, match=re.escape(words)):
        complete(tiny, max_tokens=5, **fields)
    assert complete(tiny, max_tokens=3).text  # the server serves on
