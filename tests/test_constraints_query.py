"""LMQL programs whose variable is constrained by a REGEX alone run it on the server in one
GENERATE (query/server_side.py); their values are transformers' greedy decode under the mask
``Regex`` computes on the client (test_constraints_engine.reference_greedy), and clauses the
server cannot take whole keep the client-side masks (a request per mask change)."""

from __future__ import annotations

from typing import Any

import pytest

import lmql
from tests.conftest import Server, server_metric
from tests.test_constraints_engine import DATE, reference_greedy

pytestmark = pytest.mark.hf
PROMPT = "The meeting was moved to "
DAYS = "(Monday|Tuesday|next week)"


def program(where: str) -> str:
    return f'argmax\n    "{PROMPT}[D]"\nfrom\n    "lmql-tiny"\nwhere\n    {where}\n'


def sequences(server: Server) -> float:
    return (server_metric(server, "lmql_sequences_finished", "lmql-tiny")
            + server_metric(server, "lmql_sequences_cancelled", "lmql-tiny"))


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from lmql_core.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    return JsonTokenizer.from_file(bundled_path("lmql-tiny") / "tokenizer.json")  # type: ignore[operator]


@pytest.mark.parametrize("pattern", [DATE, DAYS])
def test_a_regex_variable_runs_in_one_request_with_the_client_masks_result(
        tiny_server: Server, tokenizer: Any, pattern: str) -> None:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    expected = reference_greedy(tokenizer, bos + tokenizer.encode(PROMPT, add_special_tokens=False), pattern)
    served = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    before = sequences(tiny_server)
    result = lmql.run_sync(program(f'REGEX(D, r"{pattern}")'), model=served)
    assert result.variables["D"] == expected
    assert sequences(tiny_server) - before == 1
    local = lmql.run_sync(program(f'REGEX(D, r"{pattern}")'), model=lmql.model("local:lmql-tiny"))
    assert local.variables["D"] == expected


def test_a_clause_the_server_cannot_take_whole_stays_on_the_client(tiny_server: Server) -> None:
    served = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    before = sequences(tiny_server)
    where = f'REGEX(D, r"{DATE}") or REGEX(D, r"[a-z]{{3}}")'
    value = lmql.run_sync(program(where), model=served).variables["D"]
    assert sequences(tiny_server) - before > 1  # a request per mask change
    import re

    assert re.fullmatch(DATE, value) or re.fullmatch("[a-z]{3}", value)
