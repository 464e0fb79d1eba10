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
    from lmql_core.loading.tokenizer import JsonTokenizer
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


def reference_choice(tokenizer: Any, prompt: list[int], options: list[str]) -> str:
    """transformers' greedy choice under LMQL's ``in`` mask: after the text v, the first token of
    each remaining option's own tokenization; EOS where v is an option; the end where nothing is left."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmql_hf.bundled import bundled_path

    model = AutoModelForCausalLM.from_pretrained(bundled_path("lmql-tiny")).eval()
    ids: list[int] = []
    while True:
        text = tokenizer.decode(ids)
        rests = [o[len(text):] for o in options if o.startswith(text)]
        allowed = sorted({tokenizer.encode(r, add_special_tokens=False)[0] for r in rests if r})
        allowed += [tokenizer.eos_token_id] if "" in rests else []
        if not allowed:
            return text
        if len(allowed) == 1 and allowed[0] != tokenizer.eos_token_id:
            ids.append(allowed[0])  # the one token allowed, as LMQL takes it without the model
            continue
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, -1]
        chosen = allowed[int(logits[allowed].argmax())]
        if chosen == tokenizer.eos_token_id:
            return text
        ids.append(chosen)


def test_an_in_list_runs_in_one_request_with_the_client_masks_result(tiny_server: Server, tokenizer: Any) -> None:
    options = ["Monday", "Tuesday", "Mon", "next week", "the big room", "the bigger room"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    expected = reference_choice(tokenizer, bos + tokenizer.encode(PROMPT, add_special_tokens=False), options)
    served = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    before = sequences(tiny_server)
    assert lmql.run_sync(program(f"D in {options!r}"), model=served).variables["D"] == expected
    assert sequences(tiny_server) - before == 1
    assert lmql.run_sync(program(f"D in {options!r}"), model=lmql.model("local:lmql-tiny")).variables["D"] == expected


def test_a_clause_no_grammar_takes_whole_runs_as_a_template_or_on_the_client(
        tiny_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``or`` of regexes is no one grammar: the template extension masks it on the server in
    one sequence (query/template_run.py); forced off, the client sends a request per mask change."""
    served = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    where = f'REGEX(D, r"{DATE}") or REGEX(D, r"[a-z]{{3}}")'
    before = sequences(tiny_server)
    on_server = lmql.run_sync(program(where), model=served).variables["D"]
    assert sequences(tiny_server) - before == 1
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
    before = sequences(tiny_server)
    value = lmql.run_sync(program(where), model=served).variables["D"]
    assert sequences(tiny_server) - before > 1  # a request per mask change
    import re

    assert re.fullmatch(DATE, value) or re.fullmatch("[a-z]{3}", value)
    assert on_server == value
