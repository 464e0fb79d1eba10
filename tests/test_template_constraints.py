"""Constrained LMQL prompt statements run on the server as one template GENERATE (issue 31):
lmql-tiny served by a real `lmql serve-model`, over real sockets.

The reference is the client path (``LMQL_SERVER_CONSTRAINTS=off``: a mask per step sent as
``logit_bias``, LMQL 0.7.3's way, which tests/compat checks against LMQL 0.7.3 itself): every
constraint kind gives the same greedy values, prompt and prompt tokens, in one request. Raw
template requests check the wire: each hole's entries are tagged, and bad templates end their
own stream with a clear error while the server and the connection live on."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest

import lmql
from tests.conftest import RawClient, Server, server_metric, wait_until
from tests.template_programs import MODEL, PROGRAMS, program, run

pytestmark = pytest.mark.hf


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
    event loop for each token costs the engine thread): its tokens and its end entry come in one
    frame when the engine thread went on to the next hole itself, the last hole's end in a frame
    of its own (the event loop ends the stream); a plain stream's come token by token."""
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
    assert [e["hole"] for frame in template for e in frame] == [0] * 6 + [1] * 4
    # hole A whole in the first frame (a loop that lagged may have joined B's first entries to it)
    assert [e["hole"] for e in template[0][:6]] == [0] * 6 and "hole_finish" in template[0][5]
    assert len(template) <= 4 and template[-1][-1].get("finish_reason") is not None
    assert all(e.get("finish_reason") is None for frame in template[:-1] for e in frame)
    # a lagging loop joins the entries of the steps it missed: 64 steps, so that some frames
    # still come apart on a loaded machine (CI once saw 6 tokens in one frame)
    plain = asyncio.run(frames_of({"prompt": [1, 200, 300], "max_tokens": 64}))
    assert len(plain) > 2 and sum(len(frame) for frame in plain) == 64


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


def test_cancelling_a_template_whose_holes_the_engine_goes_through_stops_it(tiny_server: Server) -> None:
    """The engine thread starts a template's next hole itself as one ends: a CANCEL between holes
    stops the hole running then, whichever thread started it, and no later hole starts."""
    from lmql_core.constraints import kinds
    from lmql_core.constraints.serial import to_json

    before = server_metric(tiny_server, "lmql_sequences_cancelled", MODEL)
    holes = [hole(name=f"H{i}", constraints=to_json(kinds.Count("<", 30)), max_length=500) for i in range(12)]

    async def scenario() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with RawClient(tiny_server.endpoint) as client:
            await client.send("GENERATE", {"model": MODEL, "stream_id": 8, "prompt": [1, 200],
                                           "template": {"holes": holes, "texts": [" and"] * 11}})
            while not any("hole_finish" in e for e in seen):  # the engine went on after hole 0
                seen += (await client.frame())[1]
            await client.send("CANCEL", {"stream_id": 8})
            with contextlib.suppress(TimeoutError):
                while True:
                    seen += (await client.frame(timeout=2.0))[1]
        return seen

    seen = asyncio.run(scenario())
    assert not [e for e in seen if "finish_reason" in e and e["finish_reason"] is not None]
    assert max(e["hole"] for e in seen) < 11
    assert server_metric(tiny_server, "lmql_sequences_cancelled", MODEL) - before == 1
    assert server_metric(tiny_server, "lmql_active_sequences", MODEL) == 0


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
