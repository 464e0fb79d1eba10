"""Constrained LMQL prompt statements run on the server as one template GENERATE (issue 31):
lmql-tiny served by a real `lmql serve-model`, over real sockets.

The reference is the client path (``LMQL_SERVER_CONSTRAINTS=off``: a mask per step sent as
``logit_bias``, LMQL 0.7.3's way, which tests/compat checks against LMQL 0.7.3 itself): every
constraint kind gives the same greedy values, prompt and prompt tokens, in one request. Raw
template requests check the wire: each hole's entries are tagged, and bad templates end their
own stream with a clear error while the server and the connection live on."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest

import lmql
from tests.conftest import RawClient, Server, server_metric, wait_until

pytestmark = pytest.mark.hf
MODEL = "lmql-tiny"

PROGRAMS = {
    "int": ('"Q: How old is the tower?\\nA: [N] years"', "INT(N)"),
    "stops_at": ('"A list of fruits:\\n-[X]\\n-[Y]"', 'STOPS_AT(X, "\\n") and STOPS_AT(Y, "\\n") '
                                                      'and len(TOKENS(X)) < 12 and len(TOKENS(Y)) < 12'),
    "stops_before": ('"Say something: [X] more"', 'STOPS_BEFORE(X, " ") and len(TOKENS(X)) < 10'),
    "len_chars": ('"Describe the sea: [X]"', "len(X) < 14"),
    "len_tokens": ('"Once upon a time[X]"', "len(TOKENS(X)) < 6"),
    "regex": ('"The date is [D]"', r'REGEX(D, r"[0-9]{2}/[0-9]{2}/[0-9]{4}")'),
    "in": ('"The best animal is the [A]."', 'A in ["cat", "dog", "catfish", "horse"]'),
    "equals": ('"Say yes: [A]"', 'A == "yes"'),
    "and_or": ('"Pick: [A]"', '(A in ["red", "green"] or len(TOKENS(A)) < 3) and not "x" in A'),
    "four_variables": ('"Name:[NAME]\\nAge:[AGE]\\nColor:[COLOR]\\nMotto:[MOTTO]"',
                       'STOPS_AT(NAME, "\\n") and len(TOKENS(NAME)) < 6 and INT(AGE) and '
                       'COLOR in [" red", " blue", " green"] and len(MOTTO) < 20 and '
                       'STOPS_AT(MOTTO, ".") and len(TOKENS(AGE)) < 4'),
    "typed_regex_and_int": ('"The code is [C: r\'[A-Z][0-9]{3}\'] and the count [N: int]"', "len(TOKENS(C)) < 10"),
    "later_hole_sees_earlier": ('"First:[A] Second:[B]"',
                                'len(TOKENS(A)) < 4 and (len(A) > 100 or B in [" x", " y"]) '
                                'and len(TOKENS(B)) < 4'),
}


def program(prompt: str, where: str) -> str:
    return f"argmax\n    {prompt}\nwhere\n    {where}\n"


def run(source: str, model: Any) -> tuple[dict[str, Any], str, int]:
    before = model.requests
    result = lmql.run_sync(source, model=model)
    return result.variables, result.prompt, model.requests - before


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_each_kind_on_the_server_equals_the_client_path(tiny_server: Server, name: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model = lmql.model(MODEL, endpoint=tiny_server.endpoint)
    source = program(*PROGRAMS[name])
    values, prompt, requests = run(source, model)
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
    client_values, client_prompt, _ = run(source, model)
    assert (values, prompt) == (client_values, client_prompt)
    assert requests == 1, f"the server path took {requests} requests"


@pytest.mark.parametrize("path", ["on", "off"])
def test_an_earlier_value_counts_the_tokens_it_was_generated_as(tiny_server: Server, path: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """LMQL 0.7.3's TOKENS(A) is A's generated tokens (ProgramState.get_tokens), not its text
    re-tokenized: lmql-tiny writes A as "\\n" then "\\t", which encode together as one token, so
    a constraint on A read while B is generated holds, and B is generated (both paths)."""
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", path)
    model = lmql.model(MODEL, endpoint=tiny_server.endpoint)
    values, _, _ = run(program('"Name:[A]\\nB:[B]"', "len(TOKENS(A)) == 2 and len(TOKENS(B)) < 4"), model)
    from transformers import AutoTokenizer

    from lmql_hf.bundled import bundled_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_path(MODEL))
    assert values["A"] == "\n\t" and len(tokenizer.encode("\n\t", add_special_tokens=False)) == 1
    assert values["B"] != ""


def test_python_conditions_keep_the_client_path(tiny_server: Server) -> None:
    model = lmql.model(MODEL, endpoint=tiny_server.endpoint)
    source = program('"Count:[X]"', "len(X) < 12 and limit > 2")  # a mask per character count
    before = model.requests
    lmql.run_sync(source, model=model, limit=5)
    assert model.requests - before > 1  # a request per mask change, as LMQL 0.7.3


def test_a_template_over_the_socket_tags_each_hole(tiny_server: Server) -> None:
    from lmql_core.constraints import kinds
    from lmql_core.constraints.serial import to_json

    holes = [{"name": "A", "constraints": to_json(kinds.Count("<", 3)), "max_length": 100},
             {"name": "B", "constraints": to_json(kinds.And([kinds.IsInt(), kinds.Count("<", 4)])),
              "max_length": 100}]

    async def scenario() -> list[dict[str, Any]]:
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("GENERATE", {"model": MODEL, "stream_id": 1, "prompt": [1, 200, 300],
                                           "template": {"holes": holes, "texts": [" and "]}})
            return await client.stream(1)

    entries = asyncio.run(scenario())
    assert [e["hole"] for e in entries] == sorted(e["hole"] for e in entries)
    first = [e for e in entries if e["hole"] == 0]
    assert len([e for e in first if e["token"] != 2]) == 2  # len(TOKENS(A)) < 3 ends it at 2 tokens
    assert first[-1]["hole_finish"] in ("stop", "length") and "finish_reason" not in first[-1]
    assert entries[-1]["hole"] == 1 and entries[-1]["finish_reason"] in ("stop", "length")


def test_a_holes_entries_come_together_when_it_ends(tiny_server: Server) -> None:
    """A hole's entries wait on the server until it ends (its client reads whole holes; waking the
    event loop for each token costs the engine thread): its tokens come in one frame, its end
    entry in the next, then the next hole's; a plain stream's come token by token."""
    from lmql_core.constraints import kinds
    from lmql_core.constraints.serial import to_json

    holes = [{"name": "A", "constraints": to_json(kinds.Count("<", 7)), "max_length": 100},
             {"name": "B", "constraints": to_json(kinds.Count("<", 5)), "max_length": 100}]

    async def frames_of(request: dict[str, Any]) -> list[list[dict[str, Any]]]:
        frames = []
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("GENERATE", {"model": MODEL, "stream_id": 1, **request})
            while not frames or frames[-1][-1].get("finish_reason") is None:
                command, payload = await client.frame()
                assert command == "TOKEN"
                frames.append(payload)
        return frames

    template = asyncio.run(frames_of({"prompt": [1, 200, 300], "template": {"holes": holes, "texts": [" and "]}}))
    assert [[e["hole"] for e in frame] for frame in template] == [[0] * 5, [0], [1] * 3, [1]]
    assert "hole_finish" in template[1][0] and "finish_reason" in template[3][0]
    plain = asyncio.run(frames_of({"prompt": [1, 200, 300], "max_tokens": 6}))
    assert len(plain) > 2 and sum(len(frame) for frame in plain) == 6  # (a lagging loop may join some)


def test_template_streams_of_a_connection_share_each_steps_frame(tiny_server: Server) -> None:
    """Several templates in one batch: their entries come in shared TOKEN frames (as plain
    streams'), not a frame per template; each stream's entries stay complete and tagged."""
    from lmql_core.constraints import kinds
    from lmql_core.constraints.serial import to_json

    streams = [11, 12, 13, 14]
    template = {"holes": [{"name": "A", "constraints": to_json(kinds.Count("<", 20)), "max_length": 200}],
                "texts": []}

    async def scenario() -> list[list[dict[str, Any]]]:
        frames = []
        async with RawClient(tiny_server.endpoint) as client:
            for sid in streams:
                await client.send("GENERATE", {"model": MODEL, "stream_id": sid, "prompt": [1, 200 + sid],
                                               "template": template})
            ended: set[Any] = set()
            while ended != set(streams):
                command, payload = await client.frame()
                assert command == "TOKEN"
                frames.append(payload)
                ended |= {e["stream_id"] for e in payload if e.get("finish_reason") is not None}
        return frames

    frames = asyncio.run(scenario())
    assert max(len({e["stream_id"] for e in frame}) for frame in frames) == len(streams)
    for sid in streams:
        entries = [e for frame in frames for e in frame if e["stream_id"] == sid]
        assert all(e["hole"] == 0 for e in entries) and len(entries) == 19  # len(TOKENS(A)) < 20


def hole(**fields: Any) -> dict[str, Any]:
    return {"name": "X", "constraints": None, "max_length": 50, **fields}


BAD = [
    ({"template": {"holes": "x", "texts": []}}, "'template.holes' must be a list"),
    ({"template": {"holes": [hole()], "texts": ["a"]}}, "'template.texts' must be a list of 0 strings"),
    ({"template": {"holes": [hole()]}}, "'template' must be an object with 'holes' and 'texts'"),
    ({"template": {"holes": [hole(constraints={"kind": "grammar"})], "texts": []}},
     "template hole 0: unknown constraint kind 'grammar'"),
    ({"template": {"holes": [hole(constraints={"kind": "int", "x": 1})], "texts": []}},
     "'int' constraint: unknown key(s) x"),
    ({"template": {"holes": [hole(colour=1)], "texts": []}}, "template hole 0: unknown key(s) colour"),
    ({"template": {"holes": [hole(max_length=0)], "texts": []}}, "'max_length' must be an integer"),
    ({"template": {"holes": [hole(temperature=-1)], "texts": []}}, "'temperature' must not be negative"),
    ({"template": {"holes": [hole(constraints={"kind": "holds", "hole": 0, "rule": {"kind": "int"}})],
                   "texts": []}}, "refers to hole 0, which is not an earlier hole"),
    ({"template": {"holes": [hole()], "texts": []}, "regex": "a"}, "a template GENERATE takes no regex"),
    ({"template": {"holes": [hole(constraints={"kind": "regex", "pattern": "(["})], "texts": []}},
     "invalid regular expression"),
    # the second hole's prompt is past lmql-tiny's 512 positions: that hole's error, after the first
    ({"template": {"holes": [hole(max_length=5000), hole(max_length=5000)], "texts": [" word" * 600]}},
     "this model's context holds 512"),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_bad_templates_end_their_stream_with_an_error(tiny_server: Server, fields: dict[str, Any],
                                                      message: str) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("GENERATE", {"model": MODEL, "stream_id": "bad", "prompt": [1, 200], **fields})
            bad = await client.stream("bad")
            await client.send("GENERATE", {"model": MODEL, "stream_id": "ok", "prompt": [1, 200],
                                           "max_tokens": 3})
            return bad, await client.stream("ok")

    bad, ok = asyncio.run(scenario())
    assert "error" in bad[-1] and message in bad[-1]["error"], bad[-1]
    assert len(ok) == 3 and "error" not in ok[-1]  # the connection and the server live on


def test_cancelling_a_template_stops_its_hole(tiny_server: Server) -> None:
    def cancelled() -> float:
        return server_metric(tiny_server, "lmql_sequences_cancelled", MODEL)

    def running() -> float:
        return server_metric(tiny_server, "lmql_active_sequences", MODEL)

    before = cancelled()

    async def scenario() -> None:
        async with RawClient(tiny_server.endpoint) as client:
            holes = [hole(max_length=400), hole(max_length=400)]
            await client.send("GENERATE", {"model": MODEL, "stream_id": 5, "prompt": [1, 200],
                                           "template": {"holes": holes, "texts": [" then"]}})
            # its first hole runs (398 tokens: its entries come only at its end)
            await asyncio.to_thread(wait_until, lambda: running() == 1)
            await client.send("CANCEL", {"stream_id": 5})
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    assert cancelled() - before == 1 and running() == 0


ERRORS = {
    # no room for N (max_len reached by the prompt): INT ends without a digit, as LMQL's int() raises
    "int_without_room": ('argmax(max_len=6)\n    "Q: How old is the tower, in years?\\nA: [N]"\nwhere\n    INT(N)\n',
                         "INT(N) ended without a digit"),
    # the second hole's prompt is past lmql-tiny's 512 positions: the server's stream ends there, the
    # first hole is replayed, the second generated on the client, which meets the same error
    "context_full": ('argmax\n    "A:[A]' + " word" * 600 + '[B]"\nwhere\n    len(TOKENS(A)) < 3 and '
                     'len(TOKENS(B)) < 3\n', "this model's context holds 512"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_come_at_the_same_hole_on_both_paths(tiny_server: Server, name: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = lmql.model(MODEL, endpoint=tiny_server.endpoint)
    source, message = ERRORS[name]
    before = model.requests
    with pytest.raises(Exception, match=re.escape(message)) as on_server:
        lmql.run_sync(source, model=model)
    templates = model.requests - before
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
    before = model.requests
    with pytest.raises(Exception, match=re.escape(message)) as on_client:
        lmql.run_sync(source, model=model)
    assert type(on_server.value) is type(on_client.value)
    assert templates == max(1, model.requests - before)  # the template, then the client's failing request


def test_llguidance_regex_masks_are_not_lmqls_so_a_regex_has_no_grammar() -> None:
    """Why a REGEX goes to the server in a template (its own mask) and not as the "constraints"
    extension's regex: after "M" in "(Monday|Tuesday|next week)", LMQL's mask (the ``regex``
    module's partial match of the text with each token) allows "o", "on" and "ond"; llguidance
    allows only "ond", the start of the canonical tokens of the forced "onday"."""
    import numpy as np

    from lmql_core.constraints import kinds
    from lmql_core.constraints.vocabulary import Vocabulary
    from lmql_core.engine.constraints import GrammarCompiler, GrammarSpec
    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    tokenizer = JsonTokenizer.from_file(bundled_path(MODEL) / "tokenizer.json")  # type: ignore[operator]
    vocab = Vocabulary.of(tokenizer)
    pattern = "(Monday|Tuesday|next week)"
    m = tokenizer.encode("M", add_special_tokens=False)
    lmql_mask = kinds.Regex(pattern).mask(vocab.value(m), vocab).tokens
    assert lmql_mask is not None
    matcher = GrammarCompiler(tokenizer, vocab.size, tokenizer.eos_token_id).compile(
        GrammarSpec.of("regex", pattern)).matcher
    assert matcher.consume_tokens(m)
    words = np.frombuffer(bytes(matcher.compute_bitmask()), dtype=np.uint8)
    llguidance_mask = np.unpackbits(words, bitorder="little")[:vocab.size].astype(bool)
    assert {vocab.texts[i] for i in np.flatnonzero(lmql_mask)} >= {"o", "on", "ond"}
    assert {vocab.texts[i] for i in np.flatnonzero(llguidance_mask)} == {"ond"}
    assert kinds.Regex(pattern).grammar(vocab) is None


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
        counters = ("lmql_engine_steps_chained", "lmql_engine_sequences_admitted_chained")
        before = [server_metric(chained, name, MODEL) for name in counters]

        async def together() -> list[Any]:
            return await asyncio.gather(*(lmql.run(program(*p), model=model) for p in PROGRAMS.values()))

        served = {name: (r.variables, r.prompt) for name, r in zip(PROGRAMS, asyncio.run(together()), strict=True)}
        chained_steps, joined = (server_metric(chained, name, MODEL) - b for name, b in zip(counters, before, strict=True))
        assert chained_steps > 0 and joined > 0  # next holes joined beside chained steps
        monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
        client = lmql.model(MODEL, endpoint=(chained if device == "cuda" else tiny_server).endpoint)
        assert served == {name: run(program(*p), client)[:2] for name, p in PROGRAMS.items()}
    finally:
        assert chained.stop() == 0, chained.output()


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
