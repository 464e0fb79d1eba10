"""A step's grammar masks (``engine/mask_filler.py``) and the tokenizer slices they are computed with
(``constraints.MASK_SLICES``), on a real 8,192-token byte-level BPE trained here.

References: llguidance with no slices at all (every token walked in its trie: the definition the
slices shortcut), and each matcher's own mask computed alone."""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np
import pytest

llguidance = pytest.importorskip("llguidance")

from lmql_core.engine import mask_filler  # noqa: E402
from lmql_core.engine.constraints import GrammarCompiler, GrammarSpec  # noqa: E402
from lmql_core.engine.mask_filler import MaskFiller, mask_threads  # noqa: E402
from lmql_core.engine.sequence import SamplingParams, Sequence, Status  # noqa: E402
from lmql_core.engine.steps import EngineStats  # noqa: E402
from lmql_core.loading.tokenizer import JsonTokenizer  # noqa: E402
from tests.bpe_vocab import trained_bpe  # noqa: E402

# short maxLengths: a walk reaches each string's last characters, where the slices differ most
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 24}, "year": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 9}, "maxItems": 3},
    "note": {"type": "string"}},
    "required": ["title", "year", "tags", "note"], "additionalProperties": False}
SPECS = [GrammarSpec.of("json_schema", SCHEMA), GrammarSpec.of("regex", r"[a-z ]{3,40}\.")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> JsonTokenizer:
    return trained_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def compiler(tokenizer: JsonTokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_id)


def mask_of(matcher: Any, words: int) -> np.ndarray:
    row = np.zeros(words, dtype=np.int32)
    matcher.unsafe_compute_mask_ptr(row.ctypes.data, words * 4)
    return row


def allowed(row: np.ndarray, vocab: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")[:vocab])


@pytest.mark.parametrize("spec", SPECS, ids=["json-schema", "regex"])
def test_sliced_masks_equal_masks_that_walk_every_token(spec: GrammarSpec, tokenizer: JsonTokenizer,
                                                        compiler: GrammarCompiler) -> None:
    """16 random walks (a random allowed token each step) under the sliced tokenizer and under one
    without slices, side by side: every mask the same, bit for bit."""
    plain = llguidance.LLTokenizer(tokenizer.spec()["tokenizer_json"], n_vocab=tokenizer.vocab_size,
                                   eos_token=tokenizer.eos_token_id, slices=[])
    rng = random.Random(0)
    steps = 0
    for _ in range(16):
        sliced = compiler.compile(spec)
        reference = llguidance.LLMatcher(plain, spec.llguidance_text(), log_level=0)
        words = sliced.mask_words
        while not sliced.matcher.is_stopped():
            mask = mask_of(sliced.matcher, words)
            assert np.array_equal(mask, mask_of(reference, words)), f"step {steps}"
            tokens = [t for t in allowed(mask, tokenizer.vocab_size) if t != tokenizer.eos_token_id]
            if not tokens:
                break
            token = int(rng.choice(tokens))
            assert sliced.matcher.consume_token(token) and reference.consume_token(token)
            steps += 1
    assert steps > 100


def sequences(compiler: GrammarCompiler, count: int) -> list[Sequence]:
    seqs = [Sequence(i, [1, 2], SamplingParams(max_tokens=64, constraint=compiler.compile(SPECS[i % 2])),
                     sink=lambda events: None) for i in range(count)]
    for seq in seqs:
        seq.status = Status.RUNNING
    return seqs


@pytest.mark.parametrize("threads", [1, 3], ids=["tokens-taken-here", "tokens-taken-on-the-executor"])
def test_masks_started_ahead_are_each_matchers_own(threads: int, compiler: GrammarCompiler,
                                                   tokenizer: JsonTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started ahead (``prefetch``, as after a slow step), taken by the next step whose constrained
    rows they cover, in the step's order; a stream that joins makes the step fill all rows again;
    the grammars take tokens only after masks started ahead are done."""
    monkeypatch.setattr(mask_filler, "INLINE_FILL_SECONDS", 0.0)  # every step counts as slow
    monkeypatch.setenv(mask_filler.MASK_THREADS_ENV, str(threads))
    filler = MaskFiller(EngineStats())
    seqs = sequences(compiler, 6)
    words = seqs[0].params.constraint.mask_words
    rng = random.Random(1)
    for step in range(6):
        if step == 3:  # a stream joins: the masks started ahead do not cover it
            seqs.append(sequences(compiler, 1)[0])
        sampled = seqs[::-1] if step % 2 else seqs  # the step's rows in another order than started
        pending = filler.start(sampled)
        assert pending is not None
        batch = filler.wait(pending, sampled)
        # (after the wait no matcher is in use: each one's own mask, computed here)
        expected = {id(s): mask_of(s.params.constraint.matcher, words) for s in seqs}
        assert batch is not None and batch.rows == list(range(len(sampled)))
        for j, seq in enumerate(sampled):
            assert np.array_equal(batch.bits[j], expected[id(seq)]), (step, j)
        tokens = [int(rng.choice(allowed(batch.bits[j], tokenizer.vocab_size))) for j in range(len(sampled))]
        taken = filler.take_tokens(sampled, tokens, [0.0] * len(sampled), tokenizer.eos_token_id)  # starts the next
        assert len(taken) == sum(t != tokenizer.eos_token_id for t in tokens)
        assert all(followed.taken for followed in taken.values())
    assert filler.stats.mask_fill_seconds > 0 and filler.stats.grammar_seconds > 0
    filler.close()


def test_mask_threads_leave_two_cpus_and_obey_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mask_filler.MASK_THREADS_ENV, raising=False)
    assert 1 <= mask_threads() <= mask_filler.MAX_MASK_THREADS
    monkeypatch.setattr(mask_filler.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(mask_filler, "_cgroup_cpus", lambda: None)
    assert mask_threads() == mask_filler.MAX_MASK_THREADS
    monkeypatch.setattr(mask_filler, "_cgroup_cpus", lambda: 5)  # a container's quota
    assert mask_threads() == 3
    monkeypatch.setenv(mask_filler.MASK_THREADS_ENV, "12")
    assert mask_threads() == 12


def test_a_grammar_many_streams_use_is_compiled_once_per_lexer_group(tokenizer: JsonTokenizer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """llguidance's copies of a matcher share its lexer behind one lock, so a grammar's streams are
    spread over ``lexer_groups`` compiled matchers in turn (one per mask thread); a grammar one
    stream uses is compiled once. Each copy still follows its own tokens: every mask the 3 threads
    fill equals the matcher's own, step after step, and every grammar takes its token."""
    grouped = GrammarCompiler(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_id, lexer_groups=3)
    schema = [grouped.compile(SPECS[0]) for _ in range(7)]
    lexers = [c.lexer for c in schema]
    assert lexers[:3] == lexers[3:6] and lexers[6] == lexers[0] and len(set(lexers)) == 3
    regex = grouped.compile(SPECS[1])
    assert regex.lexer not in lexers
    monkeypatch.setenv(mask_filler.MASK_THREADS_ENV, "3")
    monkeypatch.setattr(mask_filler, "INLINE_FILL_SECONDS", 0.0)
    filler, rng = MaskFiller(EngineStats()), random.Random(3)
    seqs = [Sequence(i, [1, 2], SamplingParams(max_tokens=64, constraint=c), sink=lambda events: None)
            for i, c in enumerate([regex, *schema])]
    for seq in seqs:
        seq.status = Status.RUNNING
    words = regex.mask_words
    for step in range(12):
        batch = filler.wait(filler.start(seqs), seqs)  # type: ignore[arg-type]
        expected = [mask_of(s.params.constraint.matcher, words) for s in seqs]  # (no matcher in use now)
        assert batch is not None
        for j in range(len(seqs)):
            assert np.array_equal(batch.bits[j], expected[j]), (step, j)
        choices = [[t for t in allowed(batch.bits[j], tokenizer.vocab_size) if t != tokenizer.eos_token_id]
                   for j in range(len(seqs))]
        tokens = [int(rng.choice(c)) if c else tokenizer.eos_token_id for c in choices]
        taken = filler.take_tokens(seqs, tokens, [0.0] * len(seqs), tokenizer.eos_token_id)
        assert len(taken) == sum(1 for c in choices if c) and all(f.taken for f in taken.values()), step
        seqs = [s for s, c in zip(seqs, choices, strict=True) if c]  # a grammar at its end leaves
    assert len(seqs) == 7  # the schema's streams went on throughout


def test_a_step_whose_constraint_bans_nothing_gets_no_mask_row(compiler: GrammarCompiler,
                                                                tokenizer: JsonTokenizer) -> None:
    """``len(TOKENS(X)) < 6`` bans nothing before its fifth token: the step fills no row for it
    (a row of all ones, work for nothing); with five tokens, only the end is left (LMQL's
    semantics, by hand), and the row is there; ``len(X) < n`` gets none while every token's text
    fits; rows of other kinds and of grammars are always."""
    from lmql_core.constraints import kinds
    from lmql_core.constraints.vocabulary import Vocabulary
    from lmql_core.engine.mask_constraint import MaskConstraint, mask_words

    vocab = Vocabulary(tokenizer)
    words = mask_words(tokenizer.vocab_size, vocab)

    def seq(i: int, constraint: Any) -> Sequence:
        s = Sequence(i, [0], SamplingParams(max_tokens=20, constraint=constraint), sink=lambda events: None,
                     max_generated=20)
        s.status = Status.RUNNING
        return s

    count = seq(0, MaskConstraint(kinds.Count("<", 6), vocab, words))
    choice = seq(1, MaskConstraint(kinds.OneOf(["red", "green"]), vocab, words))
    grammar = seq(2, compiler.compile(SPECS[1]))
    # characters: every token fits while fewer than the longest token's length are left
    roomy = vocab.longest + 6  # (" a" is 2 of them: after 3, the longest tokens no longer fit)
    chars = seq(3, MaskConstraint(kinds.Count("<", roomy, tokens=False), vocab, words))
    filler = MaskFiller(EngineStats())
    unfit = 0
    for generated in range(6):
        count.generated = tokenizer.encode(" a" * generated, add_special_tokens=False)[:generated]
        assert len(count.generated) == generated
        chars.generated = tokenizer.encode(" a" * generated, add_special_tokens=False)[:generated]
        rows = [count, choice, grammar, chars]
        pending = filler.start(rows)
        assert pending is not None
        batch = filler.wait(pending, rows)
        assert batch is not None
        text = tokenizer.decode(chars.generated)
        fits = roomy - len(text) > vocab.longest  # LMQL's rule by hand: a token of n chars needs n < room
        if generated < 5:
            assert batch.rows == [1, 2] + ([] if fits else [3]), generated
        else:
            assert batch.rows == [0, 1, 2] + ([] if fits else [3])
            assert list(allowed(batch.bits[0], tokenizer.vocab_size)) == [tokenizer.eos_token_id]
        if not fits:
            unfit += 1
            longest = {len(tokenizer.decode([t])) for t in allowed(batch.bits[-1], tokenizer.vocab_size)}
            assert max(longest) < roomy - len(text)
        choice_row = batch.bits[batch.rows.index(1)]
        firsts = {tokenizer.decode([t]) for t in allowed(choice_row, tokenizer.vocab_size)}
        assert firsts and all("red".startswith(f) or "green".startswith(f) for f in firsts)
    assert unfit == 3
    count.generated = []
    assert filler.start([count]) is None  # nothing to fill at all
    filler.close()


def test_masks_the_engine_waits_for_at_once_are_filled_on_its_own_thread(
        compiler: GrammarCompiler, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow step's masks go to the mask thread while a forward pass runs (``overlapped``); where
    the engine thread would wait for them at once (a chained step's, its forward pass queued
    already), they are filled on that thread: no mask thread to wake. Either way the same bits,
    each matcher's own mask."""
    monkeypatch.setattr(mask_filler, "INLINE_FILL_SECONDS", 0.0)  # every step counts as slow
    filler = MaskFiller(EngineStats())
    seqs = sequences(compiler, 4)
    words = seqs[0].params.constraint.mask_words
    expected = [mask_of(s.params.constraint.matcher, words) for s in seqs]
    filled_on: list[str] = []
    fill = filler._fill
    monkeypatch.setattr(filler, "_fill", lambda rows: (filled_on.append(threading.current_thread().name),
                                                       fill(rows))[1])
    for overlapped in (True, False):
        pending = filler.start(seqs, overlapped=overlapped)
        assert pending is not None
        batch = filler.wait(pending, seqs)
        assert batch is not None and all(np.array_equal(b, e) for b, e in zip(batch.bits, expected, strict=True))
    assert filled_on[0].startswith("lmql-masks") and filled_on[1] == threading.current_thread().name
    filler.close()


def test_no_forced_bytes_means_no_forced_tokens(compiler: GrammarCompiler, tokenizer: JsonTokenizer) -> None:
    """``Constraint.forced`` asks llguidance for tokens only where it forces bytes: along random
    walks through a JSON schema and a grammar with literals, every state that forces tokens forces
    bytes too (else forced text would be sampled instead of appended)."""
    rng = np.random.default_rng(7)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                               "tags": {"type": "array", "items": {"enum": ["red", "blue"]}}},
              "required": ["name", "tags"], "additionalProperties": False}
    specs = [GrammarSpec.of("json_schema", schema),
             GrammarSpec.of("grammar", 'start: "Name: " /[A-Z][a-z]{1,5}/ "\\nAge: " /[0-9]{1,2}/ "."')]
    forcing = 0
    for spec in specs:
        for _ in range(20):
            constraint = compiler.compile(spec)
            matcher = constraint.matcher
            while not matcher.is_stopped():
                ff_tokens = matcher.compute_ff_tokens()
                assert matcher.compute_ff_bytes() or not ff_tokens
                forcing += bool(ff_tokens)
                choices = allowed(mask_of(matcher, constraint.mask_words), tokenizer.vocab_size)
                assert matcher.consume_token(int(rng.choice(choices)))
    assert forcing > 20  # the walks met forced text
