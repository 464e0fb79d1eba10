"""The other kinds' masks (issue 31, part A), now remembered per vocabulary so a step reuses
what earlier steps and rows computed, equal their plain numpy/tokenizer definitions (LMQL 0.7.3's
rules) on a real BPE vocabulary; the memory they take stays bounded."""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np
import pytest

from lmql_core.constraints import kinds, vocabulary
from lmql_core.constraints.mask import Value
from lmql_core.constraints.vocabulary import Vocabulary
from tests.bpe_vocab import trained_bpe

UP_TO = {"<": operator.lt, "<=": operator.le, "==": operator.le}  # == may still grow up to the limit


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory) -> Vocabulary:
    return Vocabulary(trained_bpe(tmp_path_factory.mktemp("bpe")))


@pytest.mark.parametrize("op", ["<", "<=", "==", ">", ">=", "!="])
def test_character_counts_mask_as_the_length_comparison(vocab: Vocabulary, op: str) -> None:
    limits = [0, 1, 5, 14, 14.5, 40, -3, 2.0, 0.5, math.inf, -math.inf, math.nan, 300]
    for limit, now in itertools.product(limits, [0, 3, 13, 14, 15, 100]):
        allowed = kinds.Count(op, limit, tokens=False).mask(Value([], "x" * now, ""), vocab)
        if op not in UP_TO:
            assert allowed.tokens is None
            continue
        expected = np.asarray(UP_TO[op](now + vocab.lengths, limit), dtype=bool)
        if allowed.tokens is None:  # any token: only where every one fits
            assert expected.all(), (limit, now)
            continue
        assert np.array_equal(allowed.tokens, expected), (limit, now)


def test_choices_allow_the_first_token_of_each_rest(vocab: Vocabulary) -> None:
    options = ["red", "green", "grey", "gold", "golden retriever", " blue"]
    rule = kinds.OneOf(options)
    for text in ["", "g", "go", "gold", "gr", " ", "x"] * 2:  # the second time: remembered
        expected = np.zeros(vocab.size, dtype=bool)
        for option in options:
            if option.startswith(text) and option != text:
                expected[vocab.tokenizer.encode(option[len(text):], add_special_tokens=False)[0]] = True
        allowed = rule.mask(Value([], text, ""), vocab)
        assert np.array_equal(allowed.tokens, expected), text
        assert allowed.eos == (text in options)


def test_not_in_masks_every_token_holding_the_rest(vocab: Vocabulary) -> None:
    rule = kinds.Contains("def", negate=True)
    for text in ["", "x d", "x de", "def"] * 2:
        allowed = rule.mask(Value([], text, ""), vocab)
        if text == "def":  # LMQL's mask once the phrase is there: nothing (the variable ends)
            expected = np.zeros(vocab.size, dtype=bool)
        else:  # what the text's end has not begun of the phrase yet; EOS is not a token to mask
            rest = {"": "def", "x d": "ef", "x de": "f"}[text]
            expected = np.array([rest not in t for t in vocab.texts])
            expected[vocab.eos] = True
        assert np.array_equal(allowed.tokens, expected), text


def test_remembered_masks_stay_within_their_bytes(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    vocab = Vocabulary(trained_bpe(tmp_path_factory.mktemp("bpe")))
    monkeypatch.setattr(vocabulary, "MASK_CACHE_BYTES", 10 * vocab.size)  # room for ten bool masks
    for n in range(50):
        vocab.containing(f"x{n}")
    assert 5 <= len(vocab._remembered) <= 10
    assert vocab._remembered_bytes <= 10 * vocab.size
    assert np.array_equal(vocab.containing("x0"), [("x0" in t) and i != vocab.eos for i, t in enumerate(vocab.texts)])


def test_prepared_says_whether_prepare_has_work_left(tmp_path_factory: pytest.TempPathFactory) -> None:
    fresh = Vocabulary(trained_bpe(tmp_path_factory.mktemp("bpe")))
    assert not fresh.prepared
    fresh.prepare()
    assert fresh.prepared and len(fresh.texts) == fresh.size
