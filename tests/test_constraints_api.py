"""``generate(..., regex=, grammar=, json_schema=)`` on model objects, served and ``local:``:
the same texts both ways, each the one transformers' greedy decode gives under an independent
mask (test_constraints_engine), or checked with ``re``/``json``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import lmql
from lmql_core.errors import LMQLError, ServerError
from tests.conftest import Server
from tests.test_constraints_engine import DATE, PROMPT, reference_greedy

pytestmark = pytest.mark.hf
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Zurich", "Tokyo"]},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "days"], "additionalProperties": False}
GRAMMAR = 'start: "Answer: " ("yes" | "no") "."'


@pytest.fixture(scope="module")
def models(tiny_server: Server) -> list[Any]:
    return [lmql.model("lmql-tiny", endpoint=tiny_server.endpoint), lmql.model("local:lmql-tiny")]


def test_regex_served_and_local_give_the_reference_text(models: list[Any]) -> None:
    """(Streamed too: the deltas of stream_sync join into the same text.)"""
    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    tokenizer = JsonTokenizer.from_file(bundled_path("lmql-tiny") / "tokenizer.json")  # type: ignore[operator]
    prompt = models[0].encode_prompt(PROMPT)
    expected = reference_greedy(tokenizer, prompt, DATE)
    assert [llm.generate_sync(PROMPT, max_tokens=40, regex=DATE) for llm in models] == [expected, expected]
    assert "".join(models[0].stream_sync(PROMPT, max_tokens=40, regex=DATE)) == expected


def test_json_schema_and_grammar(models: list[Any]) -> None:
    import jsonschema
    texts = [llm.generate_sync(PROMPT, max_tokens=40, json_schema=SCHEMA) for llm in models]
    assert texts[0] == texts[1]
    jsonschema.validate(json.loads(texts[0]), SCHEMA)
    answers = [llm.generate_sync(PROMPT, max_tokens=10, grammar=GRAMMAR) for llm in models]
    assert answers[0] == answers[1] and re.fullmatch(r"Answer: (yes|no)\.", answers[0])


def test_a_bad_regex_is_the_servers_error(models: list[Any]) -> None:
    for llm in models:
        with pytest.raises(ServerError, match="invalid regex"):
            llm.generate_sync(PROMPT, max_tokens=5, regex="([0-9]")


def test_a_model_without_constraints_says_so() -> None:
    """The example plugin's model has no EOS, so its session offers no constraints: asking for one
    is an error before anything is generated, not an unconstrained text."""
    llm = lmql.model("local:counting:offered")
    with pytest.raises(LMQLError, match="does not follow regex"):
        llm.generate_sync("a", max_tokens=3, regex="b+")
    with pytest.raises(LMQLError, match="does not follow json_schema"):
        list(llm.stream_sync("a", max_tokens=3, json_schema={"type": "object"}))


def test_a_compile_past_the_time_bound_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session bounds a compile's time (llguidance's limits keep real ones far below it):
    with the bound at zero, an uncached grammar fails with the error that says so."""
    from lmql_core.lmtp.server import session

    monkeypatch.setattr(session, "COMPILE_TIMEOUT_S", 0.0)
    llm = lmql.model("local:lmql-tiny")
    with pytest.raises(ServerError, match="took longer than 0 s to compile"):
        llm.generate_sync(PROMPT, max_tokens=5, regex="never compiled before [0-9]{3}")
