"""REGEX masks (issue 31, part A): the fast mask (first-character pruning, masks remembered per
automaton state) allows exactly the tokens of the plain definition, LMQL 0.7.3's: every token t
where ``regex.fullmatch(text + t, partial=True)`` matches, EOS never. The reference is that
per-token loop, kept here, over a real byte-level BPE vocabulary trained on this machine's
Python sources, at many texts a generation could reach (random walks through the reference's
own masks) and some it could not. Where the pattern has an automaton, its states are checked
against ``regex`` itself on random strings."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import regex

from lmql_core.constraints.kinds import Regex
from lmql_core.constraints.mask import Value
from lmql_core.constraints.regex_states import automaton
from lmql_core.constraints.vocabulary import Vocabulary
from lmql_core.loading.tokenizer import JsonTokenizer
from tests.bpe_vocab import trained_bpe

PATTERNS = [
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"(Monday|Tuesday|Mon|next week)( morning)?",
    r"[A-Z][a-z]+ [A-Z][a-z]+",
    r"[^\n]{1,30}",
    r"[a-z ]{1,20}\.",
    r"(ab|abc|abcd)*x?",
    r"[0-9]+(\.[0-9]+)?",
    r"\d{2}/\d{2}/\d{4}",            # a class where re and regex differ: keyed by text
    r"[äöüß]+[^äöü]{0,3}",
    r"(def|class) [a-z_]+\(",
    r"(?i)monday|friday",            # flags: keyed by text
    r"\w+\b",                        # word boundary: keyed by text
    r"(?=[0-9])[0-9a-f]{1,6}",       # lookahead: keyed by text
    r"(a|b)\1c?",                    # backreference: keyed by text
    r"\p{Lu}\p{Ll}*",                # regex's own classes: keyed by text
    r"[[:digit:]]{1,3}",             # POSIX class, regex only: keyed by text
    r"x{0}y|z*",
    r".{0,4}",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> JsonTokenizer:
    return trained_bpe(tmp_path_factory.mktemp("bpe"))


def reference_mask(pattern: str, text: str, vocab: Vocabulary) -> tuple[np.ndarray, bool]:
    """The plain definition: one partial match per token."""
    compiled = regex.compile(pattern)
    tokens = np.array([compiled.fullmatch(text + t, partial=True) is not None for t in vocab.texts], dtype=bool)
    if vocab.eos is not None:
        tokens[vocab.eos] = False
    return tokens, compiled.fullmatch(text) is not None


def walk_texts(pattern: str, vocab: Vocabulary, rng: random.Random, steps: int) -> list[str]:
    """The texts of a random generation under the reference's masks, and a few dead ends."""
    texts, text = [""], ""
    for _ in range(steps):
        allowed, _ = reference_mask(pattern, text, vocab)
        ids = np.flatnonzero(allowed)
        if len(ids) == 0:
            break
        text += vocab.texts[int(rng.choice(list(ids)))]
        texts.append(text)
    return texts + [text + "\n\n", "zzz" + text]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_fast_regex_masks_equal_the_per_token_definition(pattern: str, tokenizer: JsonTokenizer) -> None:
    vocab = Vocabulary(tokenizer)
    rng = random.Random(pattern)
    texts = [t for seed in range(3) for t in walk_texts(pattern, vocab, rng, 6)]
    constraint = Regex(pattern)
    for text in texts + texts[::-1]:  # the second time, every mask comes from what was remembered
        expected_tokens, expected_full = reference_mask(pattern, text, vocab)
        allowed = constraint.mask(Value([], text, ""), vocab)
        assert allowed.eos == expected_full, text
        assert allowed.tokens is not None
        wrong = np.flatnonzero(allowed.tokens != expected_tokens)
        assert len(wrong) == 0, f"{text!r}: tokens {[vocab.texts[i] for i in wrong[:5]]} differ"


def random_strings(rng: random.Random, count: int) -> list[str]:
    alphabet = "0123456789-/ abcdxyzMTondayuesw.\näöüß(_:A"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(count)]


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if automaton(p) is not None])
def test_automaton_states_decide_as_regex(pattern: str) -> None:
    """A state holds the end exactly where regex fully matches, and is empty exactly where no
    partial match is left: the states are sound keys for regex's own answers."""
    machine = automaton(pattern)
    assert machine is not None
    compiled = regex.compile(pattern)
    for text in random_strings(random.Random(pattern), 3000) + ["2024-05-17", "Tuesday morning", "abcabx"]:
        state = machine.advance(machine.start(), text)
        assert (machine.accept in state) == (compiled.fullmatch(text) is not None), text
        assert bool(state) == (compiled.fullmatch(text, partial=True) is not None), text


@pytest.mark.parametrize("pattern", [r"\d{2}", r"(?i)a", r"\bx", "(a)\\1", r"[[:alpha:]]", r"a++", r"(?>ab)"])
def test_patterns_outside_the_shared_syntax_have_no_automaton(pattern: str) -> None:
    assert automaton(pattern) is None


def test_a_pattern_too_large_for_an_automaton_is_keyed_by_text(tokenizer: JsonTokenizer) -> None:
    pattern = r"(a{1,1000}){1,1000}"
    assert automaton(pattern) is None
    vocab = Vocabulary(tokenizer)
    allowed = Regex(pattern).mask(Value([], "aa", ""), vocab)
    assert np.array_equal(allowed.tokens, reference_mask(pattern, "aa", vocab)[0])


def test_dates_share_one_mask_per_state(tokenizer: JsonTokenizer) -> None:
    vocab = Vocabulary(tokenizer)
    rule: Any = Regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
    first = rule.mask(Value([], "2024-0", ""), vocab).tokens
    assert Regex(rule.pattern).mask(Value([], "1999-1", ""), vocab).tokens is first


def test_a_pattern_whose_states_grow_too_large_is_keyed_by_text(tokenizer: JsonTokenizer) -> None:
    """(x?){0,3000}: every position reaches thousands without a character; it would cost
    seconds a state, so the first one found too large turns the pattern's keys into texts."""
    import time

    pattern = r"(x?){0,3000}y"
    vocab = Vocabulary(tokenizer)
    started = time.monotonic()
    for text in ["", "x", "xx", "xxy"]:
        allowed = Regex(pattern).mask(Value([], text, ""), vocab)
        assert np.array_equal(allowed.tokens, reference_mask(pattern, text, vocab)[0]), text
    machine = automaton(pattern)
    assert machine is not None and not machine.usable
    assert time.monotonic() - started < 30


def test_counts_far_from_a_repetitions_end_share_one_mask(tokenizer: JsonTokenizer) -> None:
    """[a-z]{1,200}: every count more than the longest token away from 200 has the same
    continuations within a token, so one mask serves them all (an automaton state each, one
    class set); every mask equals the per-token definition, near the end too."""
    vocab = Vocabulary(tokenizer)
    pattern, most = r"[a-z]{1,200}", 200
    far = most - vocab.longest  # counts below this share
    assert far > 20  # (the vocabulary's longest token leaves room to share)
    rule = Regex(pattern)
    counts_of: dict[int, list[int]] = {}
    for count in list(range(far + 3)) + list(range(most - 6, most + 1)):
        text = "a" * count
        allowed = rule.mask(Value([], text, ""), vocab)
        expected, full = reference_mask(pattern, text, vocab)
        assert allowed.tokens is not None and np.array_equal(allowed.tokens, expected), count
        assert allowed.eos == full, count
        counts_of.setdefault(id(allowed.tokens), []).append(count)
    assert list(range(1, far)) == counts_of[id(rule.mask(Value([], "a", ""), vocab).tokens)][:far - 1]
    assert len(counts_of) <= 2 + 3 + 7  # the empty text, the shared counts, those near the end


def test_a_key_asked_again_after_its_classes_were_left_to_another_thread_is_the_same(
        tokenizer: JsonTokenizer) -> None:
    """Following with slow masks deferred (the engine thread), a text's key may first need the
    pattern's classes, which are left to another thread (MaskPending); asked again, the text's
    mask is the definition's, not that of a text read twice."""
    from lmql_core.constraints.mask import MaskPending
    from lmql_core.constraints.vocabulary import slow_masks_deferred

    pattern = r"[0-9]{2}-[a-z]{2}"
    rule = Regex(pattern)
    rule.mask(Value([], "1", ""), Vocabulary(tokenizer))
    vocab = Vocabulary(tokenizer)  # one that remembers nothing yet (as after evictions)
    with slow_masks_deferred(), pytest.raises(MaskPending):
        rule.mask(Value([], "12", ""), vocab)
    for text in ["12", "12-", "12-a", "1x"]:  # the value goes on (and a dead end's mask)
        allowed = rule.mask(Value([], text, ""), vocab)
        assert allowed.tokens is not None
        assert np.array_equal(allowed.tokens, reference_mask(pattern, text, vocab)[0]), text
