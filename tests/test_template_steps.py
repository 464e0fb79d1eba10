"""LMQL templates inside the engine's steps (issue 31): a template's rows beside a grammar's in
one batch, tokens the constraints force taken without a model step, and chained steps (the GPU's
path, forced on here on the CPU) through open and closed masks, ending holes and joining ones:
lmql-tiny served by a real `lmql serve-model`, each result against the client path
(``LMQL_SERVER_CONSTRAINTS=off``, tests/compat checks that one against LMQL 0.7.3)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import lmql
from tests.conftest import RawClient, Server, server_metric
from tests.template_programs import MODEL, PROGRAMS, program, run

pytestmark = pytest.mark.hf


def test_a_template_and_a_grammar_share_the_batch(tiny_server: Server) -> None:
    """Rows of both constraint kinds in one step (MaskFiller fills llguidance's and the kinds'
    masks into one array): each stream gets what it gets alone."""
    import re as regex_module

    from lmql_core.constraints import kinds
    from lmql_core.constraints.serial import to_json

    template = {"holes": [{"name": "A", "constraints": to_json(kinds.Count("<", 12, tokens=False)),
                           "max_length": 60}], "texts": []}
    pattern = "[0-9]{4}-[0-9]{2}"

    async def together() -> dict[Any, list[dict[str, Any]]]:
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("GENERATE", {"model": MODEL, "stream_id": "t", "prompt": [1, 200, 300],
                                           "template": template})
            await client.send("GENERATE", {"model": MODEL, "stream_id": "g", "prompt": [1, 200, 300],
                                           "regex": pattern, "max_tokens": 20})
            return await client.collect({"t", "g"})

    async def alone() -> list[dict[str, Any]]:
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("GENERATE", {"model": MODEL, "stream_id": "t", "prompt": [1, 200, 300],
                                           "template": template})
            return await client.stream("t")

    both, single = asyncio.run(together()), asyncio.run(alone())
    assert [e["token"] for e in both["t"]] == [e["token"] for e in single]
    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    tokenizer = JsonTokenizer.from_file(bundled_path(MODEL) / "tokenizer.json")  # type: ignore[operator]
    assert regex_module.fullmatch(pattern, tokenizer.decode([e["token"] for e in both["g"]]))


def test_forced_tokens_and_the_end_take_no_model_step(tiny_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first token of a long option, the rest is one token at a time with nothing else
    allowed, and then the variable is done: the runtime takes those tokens and ends without asking
    the model; so does the server (one step for the prompt's token, none after), same values."""
    options = ["the quick brown fox jumps over the lazy dog and runs far away", "a cat"]
    source = program('"The story: [S]"', f"S in {options!r}")
    model = lmql.model(MODEL, endpoint=tiny_server.endpoint)
    steps, tokens = (server_metric(tiny_server, name, MODEL) for name in ("lmql_engine_steps", "lmql_tokens_generated"))
    values, _, requests = run(source, model)
    steps_taken = server_metric(tiny_server, "lmql_engine_steps", MODEL) - steps
    tokens_taken = server_metric(tiny_server, "lmql_tokens_generated", MODEL) - tokens
    assert values["S"] in options and requests == 1
    assert steps_taken <= 2 < tokens_taken  # the prompt's step (and at most one more), not one a token
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
    assert run(source, model)[0] == values


def test_open_masks_let_template_steps_chain(tiny_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chained steps (forced on here, the GPU's path) take template rows while their masks let
    every token through (``len(TOKENS(X)) < n`` well before n), and give the client path's values:
    each hole's mask after its count is reached, forced tokens and stops still hold."""
    chained = Server(MODEL, "--chain_steps", "True")
    try:
        model = lmql.model(MODEL, endpoint=chained.endpoint)
        source = program('"Once upon a time[X] and then:[Y]\\nColor:[C]"',
                         'len(TOKENS(X)) < 25 and STOPS_AT(Y, ".") and len(TOKENS(Y)) < 30 '
                         'and C in [" red", " blue"]')
        before = server_metric(chained, "lmql_engine_steps_chained", MODEL)
        values, prompt, requests = run(source, model)
        assert server_metric(chained, "lmql_engine_steps_chained", MODEL) > before
        monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
        assert (values, prompt) == run(source, lmql.model(MODEL, endpoint=tiny_server.endpoint))[:2]
        assert requests == 1
    finally:
        assert chained.stop() == 0, chained.output()


def test_closed_masks_chain_too_sampled_once_the_tokens_are_read(tiny_server: Server,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Chained steps (forced on here, the GPU's path) take template rows whose next mask needs
    the token in flight too (a count of characters, a stopping phrase, INT, REGEX, ``in``): the
    step's forward pass runs before that token is read, and its rows are sampled under masks made
    once it is (a row whose constraints forced tokens is dropped, they are fed next). Every
    program gives the client path's values and prompt."""
    chained = Server(MODEL, "--chain_steps", "True")
    try:
        model = lmql.model(MODEL, endpoint=chained.endpoint)
        for name in ("len_chars", "stops_before"):  # never open: no chained step before this change
            before = server_metric(chained, "lmql_engine_steps_chained", MODEL)
            run(program(*PROGRAMS[name]), model)
            assert server_metric(chained, "lmql_engine_steps_chained", MODEL) > before, name
        served = {name: run(program(*p), model)[:2] for name, p in PROGRAMS.items()}
        monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
        client = lmql.model(MODEL, endpoint=tiny_server.endpoint)
        assert served == {name: run(program(*p), client)[:2] for name, p in PROGRAMS.items()}
    finally:
        assert chained.stop() == 0, chained.output()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not os.environ.get("LMQL_TEST_CUDA"), reason="LMQL_TEST_CUDA=1 on a machine with a GPU"))])
def test_templates_side_by_side_in_chained_steps(tiny_server: Server, monkeypatch: pytest.MonkeyPatch,
                                                 device: str) -> None:
    """Every program at once on a server that chains steps (forced on here on the CPU; CUDA graphs
    chain on a GPU): holes end while others decode (their rows left out of the next chained
    step), tokens the constraints force ride in chained steps beside the others' sampled ones,
    and next holes join beside a chained step. Each program gives the client path's values and
    prompt, run alone (on the GPU, on the same server)."""
    chained = Server(MODEL, "--chain_steps", "True", *(["--cuda"] if device == "cuda" else []))
    try:
        model = lmql.model(MODEL, endpoint=chained.endpoint)
        counters = ("lmql_engine_steps_chained", "lmql_engine_sequences_admitted_chained",
                    "lmql_engine_sequences_taken_over")
        before = [server_metric(chained, name, MODEL) for name in counters]

        async def together() -> list[Any]:
            return await asyncio.gather(*(lmql.run(program(*p), model=model) for p in PROGRAMS.values()))

        served = {name: (r.variables, r.prompt) for name, r in zip(PROGRAMS, asyncio.run(together()), strict=True)}
        chained_steps, joined, taken_over = (server_metric(chained, name, MODEL) - b
                                             for name, b in zip(counters, before, strict=True))
        # first holes joined beside chained steps; next holes went on in their last ones' places
        assert chained_steps > 0 and joined > 0 and taken_over > 0
        monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
        client = lmql.model(MODEL, endpoint=(chained if device == "cuda" else tiny_server).endpoint)
        assert served == {name: run(program(*p), client)[:2] for name, p in PROGRAMS.items()}
    finally:
        assert chained.stop() == 0, chained.output()


def test_next_holes_go_on_in_the_last_ones_cache(tiny_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template's next hole goes on in its last one's place in the batch and its cache
    (``backend.TakesOver``): only the tokens after those the two prompts share are fed, also where
    the value's prompt text differs from its tokens (a stopping phrase cut off, INT's number),
    and every program gives the client path's values and prompt."""
    model = lmql.model(MODEL, endpoint=tiny_server.endpoint)
    names = ("four_variables", "stops_at", "later_hole_sees_earlier")
    taken_over, served = [], {}
    for name in names:
        before = server_metric(tiny_server, "lmql_engine_sequences_taken_over", MODEL)
        served[name] = run(program(*PROGRAMS[name]), model)[:2]
        taken_over.append(server_metric(tiny_server, "lmql_engine_sequences_taken_over", MODEL) - before)
    # (a hole whose first mask is slow, INT's, is started by the event loop, in a new sequence)
    assert all(n >= 1 for n in taken_over), dict(zip(names, taken_over, strict=True))
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
    assert served == {name: run(program(*PROGRAMS[name]), model)[:2] for name in names}


@pytest.mark.parametrize(("op", "limit"), [("<", 5), ("<=", 5), ("==", 5), (">", 2), ("!=", 3)])
def test_a_count_allows_all_exactly_where_its_mask_is_open(op: str, limit: int) -> None:
    """``len(TOKENS(X)) op limit`` lets every token and the end through after ``generated`` tokens
    exactly where its count may grow and already holds (LMQL's rule); a count of characters, or
    one beside a stopping phrase, reads the text and is never open."""
    from lmql_core.constraints import kinds

    compare = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
               ">": lambda a, b: a > b, "!=": lambda a, b: a != b}[op]
    may_grow = {"<": lambda n: n < limit, "<=": lambda n: n <= limit, "==": lambda n: n <= limit}
    for generated in range(8):
        expected = may_grow.get(op, lambda n: True)(generated + 1) and compare(generated, limit)
        assert kinds.Count(op, limit).allows_all_after(generated) is expected, (op, generated)
        assert kinds.And([kinds.Count(op, limit), kinds.Count("<", 100)]).allows_all_after(generated) is expected
    assert kinds.And([kinds.Count("<", 100), kinds.Truth(True)]).allows_all_after(0)  # another hole's, decided
    assert not kinds.And([kinds.Count("<", 100), kinds.Truth(False)]).allows_all_after(0)
    assert not kinds.Count("<", 100, tokens=False).allows_all_after(0)
    assert not kinds.And([kinds.Count("<", 100), kinds.StopsAt(".")]).allows_all_after(0)
    # the tokens before the first step that is not open: the engine follows none of them
    first_closed = next(g for g in range(8) if not (may_grow.get(op, lambda n: True)(g + 1) and compare(g, limit)))
    assert kinds.Count(op, limit).open_below() == first_closed
    assert kinds.And([kinds.Truth(True), kinds.Count(op, limit), kinds.Count("<", 100)]).open_below() == first_closed
    assert kinds.And([kinds.Count(op, limit), kinds.Truth(False)]).open_below() == 0
    assert kinds.Count("<", 100, tokens=False).open_below() == 0
    assert kinds.Or([kinds.Count("<", 100), kinds.Count("<", 50)]).open_below() == 0  # (an or: never)
