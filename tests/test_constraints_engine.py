"""Grammars inside the batch (engine/constraints.py), on the engine with lmql-tiny's HF backend.

Expected values come from elsewhere: a greedy decode by transformers under a mask computed here
with the ``regex`` module's partial matches (a token is allowed when the text with it can still
become a match); outputs checked with Python's ``re`` and ``json``."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest
import regex

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")
pytest.importorskip("llguidance")

from lmql_core.engine import pipeline  # noqa: E402
from lmql_core.engine.constraints import GrammarCompiler, GrammarError, GrammarSpec  # noqa: E402
from lmql_core.engine.engine import Engine  # noqa: E402
from lmql_core.engine.sequence import Finish, SamplingParams, Sequence, TokenEvent  # noqa: E402
from lmql_core.loading.tokenizer import JsonTokenizer  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests.conftest import StreamEvents  # noqa: E402

pytestmark = pytest.mark.hf
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
PROMPT = "The meeting was moved to"


@pytest.fixture(scope="module")
def tokenizer() -> JsonTokenizer:
    return JsonTokenizer.from_file(bundled_path("lmql-tiny") / "tokenizer.json")  # type: ignore[operator]


@pytest.fixture(scope="module")
def engine() -> Any:
    engine = Engine(HFBackend(str(bundled_path("lmql-tiny"))))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def compiler(engine: Engine, tokenizer: JsonTokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, engine.backend.vocab_size, engine.backend.eos_token_id)


def run(engine: Engine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[TokenEvent]]:
    sink = StreamEvents(len(requests))
    for i, (prompt, params) in enumerate(requests):
        engine.submit(Sequence(i, prompt, params, sink))
    assert sink.done.wait(120), "the streams did not end"
    return [sink.events[i] for i in range(len(requests))]


def reference_greedy(tokenizer: JsonTokenizer, prompt: list[int], pattern: str, limit: int = 40) -> str:
    """transformers' greedy choices under the mask of ``pattern``'s partial matches."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled_path("lmql-tiny")).eval()
    texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    eos = tokenizer.eos_token_id
    tokens, text = list(prompt), ""
    for _ in range(limit):
        allowed = [i for i, t in enumerate(texts) if i != eos and "\ufffd" not in t and t
                   and regex.fullmatch(pattern, text + t, partial=True)]
        complete = regex.fullmatch(pattern, text) is not None
        if complete:
            allowed.append(eos)  # type: ignore[arg-type]
        if complete and allowed == [eos]:
            return text
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0, -1]
        masked = torch.full_like(logits, float("-inf"))
        masked[allowed] = logits[allowed]
        chosen = int(masked.argmax())
        if chosen == eos:
            return text
        tokens.append(chosen)
        text += texts[chosen]
    raise AssertionError(f"no match within {limit} tokens: {text!r}")


def text_of(tokenizer: JsonTokenizer, events: list[TokenEvent]) -> str:
    assert not any(e.error for e in events), events[-1].error
    return tokenizer.decode([e.token for e in events if e.token != tokenizer.eos_token_id])


def test_date_regex_greedy_is_transformers_under_the_same_mask(engine, compiler, tokenizer) -> None:
    prompt = tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=40, constraint=compiler.compile(GrammarSpec.of("regex", DATE)))
    [events] = run(engine, [(prompt, params)])
    text = text_of(tokenizer, events)
    assert re.fullmatch(DATE, text)
    assert events[-1].finish_reason is Finish.EOS
    assert text == reference_greedy(tokenizer, prompt, DATE)


@pytest.mark.parametrize("inline_below", [0.0, 10.0], ids=["masks-on-their-thread", "masks-on-the-engine-thread"])
def test_constrained_and_free_streams_share_a_batch(engine, compiler, tokenizer, inline_below, monkeypatch) -> None:
    """Each constrained stream matches its own grammar; a free stream beside them decodes as alone,
    whether the masks are filled on their thread or (quick ones) on the engine thread."""
    import lmql_core.engine.mask_filler as mask_filler

    monkeypatch.setattr(mask_filler, "INLINE_FILL_SECONDS", inline_below)
    prompt = tokenizer.encode(PROMPT)
    choices = ["Monday", "Tuesday", "next week", "the big room"]
    specs = [GrammarSpec.of("regex", DATE), GrammarSpec.of("regex", "|".join(map(re.escape, choices))),
             GrammarSpec.of("regex", "[0-9]+"), GrammarSpec.of("json_schema", {
                 "type": "object", "properties": {"day": {"type": "integer"}, "ok": {"type": "boolean"}},
                 "required": ["day", "ok"], "additionalProperties": False})]
    [alone] = run(engine, [(prompt, SamplingParams(max_tokens=12))])
    filled, followed = engine.stats.mask_fill_seconds, engine.stats.grammar_seconds
    mixed = run(engine, [(prompt, SamplingParams(max_tokens=12))]
                + [(prompt, SamplingParams(max_tokens=40, constraint=compiler.compile(s))) for s in specs])
    assert [e.token for e in mixed[0]] == [e.token for e in alone]
    assert engine.stats.mask_fill_seconds > filled and engine.stats.grammar_seconds > followed
    date, choice, number, obj = (text_of(tokenizer, events) for events in mixed[1:])
    assert re.fullmatch(DATE, date)
    assert choice in choices
    assert re.fullmatch("[0-9]+", number) or mixed[3][-1].finish_reason is Finish.LENGTH
    value = json.loads(obj)
    assert set(value) == {"day", "ok"} and isinstance(value["day"], int) and isinstance(value["ok"], bool)


@pytest.mark.parametrize("inline_below", [0.0, 10.0], ids=["masks-filled-beside-the-events", "masks-inline"])
def test_chained_steps_sample_grammars_once_they_took_the_last_token(engine, compiler, tokenizer, inline_below,
                                                                     monkeypatch) -> None:
    """On a backend that chains steps (lmql-tiny with chain_steps, as CUDA graphs do on a GPU), a
    step of grammars' rows runs before the last step's tokens are read and is sampled once the
    grammars took them (a row whose grammar forced tokens is dropped there, they are fed next):
    the same tokens as the engine that does not chain (a seeded sampled stream too), the date as
    transformers' under its mask; whether the next masks are filled on llguidance's threads while
    the step's events are made (as slow masks are), or on the engine thread after them."""
    import lmql_core.engine.mask_filler as mask_filler

    monkeypatch.setattr(mask_filler, "INLINE_FILL_SECONDS", inline_below)
    chained = Engine(HFBackend(str(bundled_path("lmql-tiny")), chain_steps=True))
    try:
        prompt = tokenizer.encode(PROMPT)
        specs = [GrammarSpec.of("regex", DATE), GrammarSpec.of("regex", "[0-9]+"),
                 GrammarSpec.of("grammar", 'start: "The answer is" " " /[0-9]{1,3}/ ", surely."'),
                 GrammarSpec.of("json_schema", {"type": "object", "properties": {
                     "day": {"type": "integer"}, "note": {"type": "string", "maxLength": 12}},
                     "required": ["day", "note"], "additionalProperties": False})]

        def requests() -> list[tuple[list[int], SamplingParams]]:
            return [(prompt, SamplingParams(max_tokens=12))] + [
                (prompt, SamplingParams(max_tokens=40, constraint=compiler.compile(s))) for s in specs] + [
                (prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=7,  # its own noise: any batch
                                        constraint=compiler.compile(specs[3])))]

        steps_chained = chained.stats.steps_chained
        mine = run(chained, requests())
        assert chained.stats.steps_chained > steps_chained
        theirs = run(engine, requests())
        assert [[(e.token, e.finish_reason, e.error) for e in events] for events in mine] == \
               [[(e.token, e.finish_reason, e.error) for e in events] for events in theirs]
        assert text_of(tokenizer, mine[1]) == reference_greedy(tokenizer, prompt, DATE)
        assert json.loads(text_of(tokenizer, mine[4])).keys() == {"day", "note"}
    finally:
        chained.stop()


def greedy_under_regex_mask(tokenizer: JsonTokenizer, prompt: list[int], events: list[TokenEvent],
                            pattern: str) -> None:
    """Each of ``events``' tokens continues a partial match of ``pattern``, and each one chosen
    among several (log-prob below 0; a forced one has 0) is transformers' greedy choice under that
    mask after the stream's tokens before it (forced ones included), with its log-prob under the
    mask: one pass over them all."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled_path("lmql-tiny")).eval()
    texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    tokens = [e.token for e in events]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:]
    text = ""
    for position, event in enumerate(events):
        allowed = [i for i, t in enumerate(texts) if "\ufffd" not in t and t
                   and regex.fullmatch(pattern, text + t, partial=True)]
        assert event.token in allowed, (position, text, texts[event.token])
        if event.logprob < 0.0:
            chosen = max(allowed, key=lambda i: float(logits[position, i]))
            assert event.token == chosen, (position, text, texts[event.token], texts[chosen])
            logprobs = torch.log_softmax(logits[position, allowed], dim=-1)
            assert event.logprob == pytest.approx(float(logprobs[allowed.index(chosen)]), abs=1e-4), position
        text += texts[event.token]
    assert regex.fullmatch(pattern, text), text


# after each number "; " is forced (one token), and "end" after the fourth: the streams' numbers
# differ in length, so their forced tokens come at different steps; ", said he; " is four tokens
FORCED_BETWEEN = r"([0-9]{1,3}; ){4}end"
FORCED_RUNS = r"[0-9]{1,3}, said he; [0-9]{1,3}, said she; end"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not os.environ.get("LMQL_TEST_CUDA"), reason="LMQL_TEST_CUDA=1 on a machine with a GPU"))])
def test_forced_tokens_ride_in_chained_steps(engine, compiler, tokenizer, device) -> None:
    """A row whose grammar forces tokens after a sampled one stays in the chain: its forced tokens
    are fed from the host, one a step, in the next chained steps beside the other rows' sampled
    tokens, and it samples again in the step that feeds the last one (a run too long to ride, as
    four tokens beside another run of three in a batch of six, is fed whole in an ordinary step,
    its first token already fed in the chain); a stream that ends leaves the chain going without
    it. The steps stay chained: the prompts' step and that one are not (7 of 18 steps before
    forced tokens rode, 4 before ended rows were left out). The same tokens as the engine that
    does not chain, each sampled one transformers' greedy choice under the regex's mask after
    the stream's tokens; the backend knows the forced tokens it was fed (a grown prompt reuses them).
    On a GPU (``LMQL_TEST_CUDA=1``) its CUDA graphs chain the steps."""
    chained = Engine(HFBackend(str(bundled_path("lmql-tiny")), chain_steps=True, cuda=device == "cuda"))
    streams = [(PROMPT, FORCED_BETWEEN), ("Count with me:", FORCED_BETWEEN), ("Digits:", FORCED_BETWEEN),
               ("Here is a list", FORCED_BETWEEN), ("The answer:", FORCED_RUNS), ("Pick a number", FORCED_RUNS)]
    prompts = [tokenizer.encode(text) for text, _ in streams]

    def requests() -> list[tuple[list[int], SamplingParams]]:
        return [(prompt, SamplingParams(max_tokens=40, constraint=compiler.compile(GrammarSpec.of("regex", p))))
                for prompt, (_, p) in zip(prompts, streams, strict=True)]

    try:
        stats = chained.stats
        mine = run(chained, requests())
        theirs = run(engine, requests())
        assert [[(e.token, e.finish_reason, e.error) for e in events] for events in mine] == \
               [[(e.token, e.finish_reason, e.error) for e in events] for events in theirs]
        for prompt, (_, pattern), events in zip(prompts, streams, mine, strict=True):
            assert events[-1].finish_reason is Finish.EOS
            greedy_under_regex_mask(tokenizer, prompt, events, pattern)
        assert stats.tokens_forced_chained >= len(streams)
        assert stats.chain_breaks["ended"] == 0 and stats.chain_breaks["forced"] <= 1, stats.chain_breaks
        assert stats.steps - stats.steps_chained <= 3, (stats.steps, stats.steps_chained)
        # the backend learnt the forced tokens' values too: a prompt grown from a stream reuses them
        reused = chained.backend.table.reused_tokens
        grown = prompts[1] + [e.token for e in mine[1]] + tokenizer.encode(" and")
        run(chained, [(grown, SamplingParams(max_tokens=1))])
        last_sampled = max(i for i, e in enumerate(mine[1]) if e.logprob < 0.0)  # (the forced end is never fed)
        assert chained.backend.table.reused_tokens - reused >= len(prompts[1]) + last_sampled + 1
    finally:
        chained.stop()


@pytest.mark.parametrize("asked", ["0", "-2", "three", "1.5"])
def test_a_bad_admit_every_is_refused_with_a_warning(asked: str, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(pipeline.ADMIT_EVERY_ENV, asked)
    with caplog.at_level("WARNING"):
        assert pipeline.admit_every() == pipeline.ADMIT_EVERY
    assert f"LMQL_ADMIT_EVERY={asked!r} is not a positive whole number" in caplog.text
    monkeypatch.setenv(pipeline.ADMIT_EVERY_ENV, " 5 ")
    assert pipeline.admit_every() == 5


@pytest.mark.parametrize("admit_every", [1, 3])
def test_generations_join_beside_chained_steps(engine, compiler, tokenizer, admit_every: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that arrives while others decode in chained steps joins beside one (its prompt fed
    in a pass after it), free or under a grammar, and nothing waits for an ordinary step: every
    stream's tokens and log-probs as on the engine that does not chain. By default (here from the
    smallest batch on) a joiner waits for every third chained step: the steps before it leave it
    waiting, and the tokens are the same; ``LMQL_ADMIT_EVERY=1`` lets it in at once."""
    if admit_every == pipeline.ADMIT_EVERY:
        monkeypatch.delenv(pipeline.ADMIT_EVERY_ENV, raising=False)
    else:
        monkeypatch.setenv(pipeline.ADMIT_EVERY_ENV, str(admit_every))
    monkeypatch.setattr(pipeline, "DEFER_FROM_ROWS", 1)
    chained = Engine(HFBackend(str(bundled_path("lmql-tiny")), chain_steps=True))
    first = [(tokenizer.encode(PROMPT), SamplingParams(max_tokens=30)),
             (tokenizer.encode("Count with me:"), SamplingParams(max_tokens=24))]
    late = [(tokenizer.encode("Here is a list"), SamplingParams(max_tokens=10)),
            (tokenizer.encode("Digits:"), SamplingParams(max_tokens=20, constraint=compiler.compile(
                GrammarSpec.of("regex", FORCED_BETWEEN))))]
    try:
        sink = StreamEvents(len(first) + len(late))
        for i, (prompt, params) in enumerate(first):
            chained.submit(Sequence(i, prompt, params, sink))
        for i, (prompt, params) in enumerate(late, start=len(first)):
            deadline = time.monotonic() + 30
            while len(sink.events.get(0, [])) < 4 * i and time.monotonic() < deadline:  # decoding
                time.sleep(0.001)
            chained.submit(Sequence(i, prompt, params, sink))
        assert sink.done.wait(120), "the streams did not end"
        stats = chained.stats
        assert stats.sequences_admitted_chained == len(late), stats
        assert stats.chain_breaks["waiting"] == 0, stats.chain_breaks
        assert 1 <= stats.prompt_passes_chained <= len(late), stats
        # each joiner left waiting by the two chained steps before the one it joins
        assert (stats.admissions_deferred >= 2 * stats.prompt_passes_chained) == (admit_every == 3), stats
        for i, (prompt, params) in enumerate(first + late):
            params.constraint = params.constraint and compiler.compile(GrammarSpec.of("regex", FORCED_BETWEEN))
            [alone] = run(engine, [(prompt, params)])
            mine = sink.events[i]
            assert [e.token for e in mine] == [e.token for e in alone], i
            assert [e.logprob for e in mine] == pytest.approx([e.logprob for e in alone], abs=1e-4), i
    finally:
        chained.stop()


def test_forced_text_is_appended_without_sampling(engine, compiler, tokenizer) -> None:
    """A grammar that forces a long literal: its tokens come with log-prob 0, in fewer steps than tokens."""
    literal = "The answer, after a long and careful deliberation, is"
    spec = GrammarSpec.of("grammar", f'start: "{literal}" " " /[0-9]{{1,3}}/ "."')
    steps_before = engine.stats.steps
    [events] = run(engine, [(tokenizer.encode(PROMPT), SamplingParams(max_tokens=60,
                                                                      constraint=compiler.compile(spec)))])
    text = text_of(tokenizer, events)
    assert re.fullmatch(re.escape(literal) + r" [0-9]{1,3}\.", text)
    forced = [e for e in events if e.logprob == 0.0]
    assert len(forced) >= len(tokenizer.encode(literal)) - 2
    assert engine.stats.steps - steps_before < len(events) - 5


def test_length_limit_ends_a_constrained_stream(engine, compiler, tokenizer) -> None:
    spec = GrammarSpec.of("regex", "[a-z]{30}")
    [events] = run(engine, [(tokenizer.encode(PROMPT), SamplingParams(max_tokens=3,
                                                                      constraint=compiler.compile(spec)))])
    assert len(events) == 3 and events[-1].finish_reason is Finish.LENGTH
    assert re.fullmatch("[a-z]+", text_of(tokenizer, events))


@pytest.mark.parametrize(("kind", "source", "message"), [
    ("regex", "(", "invalid regex"),
    ("grammar", "start: /a/ & /b/", "invalid grammar"),
    ("grammar", "start: A\nA: /a/&/b/", "matches nothing"),
    ("json_schema", "{not json", "not valid JSON"),
    ("json_schema", {"type": "object", "properties": {"a": {"type": "nonsense"}}}, "invalid json_schema"),
])
def test_bad_grammars_fail_to_compile_quickly(compiler, kind, source, message) -> None:
    started = time.perf_counter()
    with pytest.raises(GrammarError, match=message):
        compiler.compile(GrammarSpec.of(kind, source))
    assert time.perf_counter() - started < 10.0  # a bound on a runaway compile, with room for a loaded machine


def test_a_grammar_too_costly_to_follow_ends_its_stream_alone(engine, compiler, tokenizer) -> None:
    """A regex whose lexer would grow without bound compiles, then fails within llguidance's
    limits once followed: that stream ends with the error, its neighbour decodes as alone."""
    prompt = tokenizer.encode(PROMPT)
    [alone] = run(engine, [(prompt, SamplingParams(max_tokens=8))])
    hostile = compiler.compile(GrammarSpec.of("regex", "(a{1000}){1000}"))
    started = time.perf_counter()
    free, failed = run(engine, [(prompt, SamplingParams(max_tokens=8)),
                                (prompt, SamplingParams(max_tokens=3000, constraint=hostile))])
    assert time.perf_counter() - started < 30
    assert failed[-1].error is not None and "too many expressions" in failed[-1].error
    assert [e.token for e in free] == [e.token for e in alone]


def test_bad_fields_are_rejected() -> None:
    with pytest.raises(GrammarError, match="must be a string"):
        GrammarSpec.of("regex", 5)
    with pytest.raises(GrammarError, match="unknown constraint kind"):
        GrammarSpec.of("lark", "start: 'a'")
    with pytest.raises(GrammarError, match="at most"):
        GrammarSpec.of("regex", "a" * 200_000)


def test_compiled_grammars_are_cached(compiler) -> None:
    spec = GrammarSpec.of("regex", "cached [0-9]+")
    before = compiler.cached()
    first, second = compiler.compile(spec), compiler.compile(spec)
    assert compiler.cached() == before + 1
    assert first.matcher is not second.matcher  # each stream follows its own copy


@pytest.mark.parametrize("rows", [[0, 2], [0, 1, 2]])  # some rows of the batch, every row
def test_mask_rows_bans_exactly_the_unset_bits(rows: list[int]) -> None:
    """numpy and torch ``mask_rows`` against bits read one by one in Python; tokens past the
    mask's width are banned, rows not named are untouched."""
    import numpy as np

    from lmql_core.base.array_ops import NumpyOps, TorchOps

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 70)).astype(np.float32)
    bits = rng.integers(-2**31, 2**31 - 1, size=(len(rows), 2), dtype=np.int64).astype(np.int32)  # 64 tokens
    expected = logits.copy()
    for j, row in enumerate(rows):
        for token in range(70):
            if token >= 64 or not (int(bits[j, token // 32]) >> (token % 32)) & 1:
                expected[row, token] = -np.inf
    assert np.array_equal(NumpyOps().mask_rows(logits, rows, bits), expected)
    torch_logits = torch.from_numpy(logits)
    assert np.array_equal(TorchOps().mask_rows(torch_logits, rows, bits).numpy(), expected)
    assert np.array_equal(torch_logits.numpy(), logits)  # the input is left as it was
