"""What a constrained variable's step reads, computed the cheap way where it repeats (issue 31 (a):
the engine thread follows every constrained row after every token): a ``Value``'s text grown token
by token from the value before it equals the tokenizer's own decode of all its tokens, and a
``Step`` counts a shared mask once, never answering from a mask that has died."""

from __future__ import annotations

import gc
import random
from collections.abc import Callable

import numpy as np
import pytest

from lmql_core.constraints.mask import GROWN_AFTER, Allowed, Value
from lmql_core.constraints.step import Step
from lmql_core.loading.tokenizer import JsonTokenizer
from tests.test_incremental_decoder import TEXT, byte_level, sentencepiece_style


def grown(ids: list[int], decode: Callable[[list[int]], str], rng: random.Random) -> list[tuple[Value, bool]]:
    """Values of ``ids[:1]``, ``ids[:2]``... each linked to the one before, as the engine links
    them (``MaskConstraint._step``), their text read at most steps (not at all: the next one
    decodes in full); whether each was read."""
    values: list[tuple[Value, bool]] = []
    before: Value | None = None
    for k in range(1, len(ids) + 1):
        value = Value(ids[:k], decode=decode, before=before)
        if before is not None:
            before.drop_before()
        read = rng.random() < 0.9
        if read:
            _ = value.text
        values.append((value, read))
        before = value
    return values


@pytest.mark.parametrize("make", [byte_level, sentencepiece_style])
def test_text_grown_token_by_token_is_the_decode_of_every_token(make: Callable[[], JsonTokenizer]) -> None:
    tokenizer = make()
    calls: list[int] = []

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return tokenizer.decode(ids)

    rng = random.Random(0)
    encoded = tokenizer.encode(TEXT, add_special_tokens=False)
    sequences = [encoded] + [[rng.randrange(tokenizer.vocab_size) for _ in range(60)] for _ in range(20)]
    for ids in sequences:
        for k, (value, _) in enumerate(grown(ids, decode, rng), start=1):
            whole, before = tokenizer.decode(ids[:k]), tokenizer.decode(ids[: k - 1])
            assert value.text == whole, (ids[:k], value.text, whole)
            assert value.diff == whole[len(before):]
    calls.clear()  # text of whole characters: past GROWN_AFTER tokens, two tokens' decodes a read
    ascii_ids = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 6, add_special_tokens=False)
    values = grown(ascii_ids, decode, random.Random(2))
    pairs = zip(values[1:], values[:-1], strict=True)
    grown_reads = [v for (v, now), (_, was) in pairs if now and was and len(v.ids) > GROWN_AFTER]
    whole_reads = [v for v, now in values if now and v not in grown_reads]
    assert len(grown_reads) > 10
    assert sorted(calls) == sorted([1, 2] * len(grown_reads) + [len(v.ids) for v in whole_reads])

def test_a_character_split_across_tokens_is_decoded_whole() -> None:
    """Byte-fallback tokens of one character: the first ones alone decode to U+FFFD; the value
    that completes it is the character, not replacement characters added up."""
    tokenizer = sentencepiece_style()
    ids = tokenizer.encode("1 2 3 4 5 6 7 8 9 10 11 12 ab 🙂 c", add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode(ids[:k]) for k in range(GROWN_AFTER + 1, len(ids)))
    for k, (value, _) in enumerate(grown(ids, tokenizer.decode, random.Random(1)), start=1):
        assert value.text == tokenizer.decode(ids[:k])
    assert value.text.endswith("🙂 c")


def test_a_step_counts_its_mask_once_and_never_from_a_dead_one() -> None:
    one = np.zeros(1000, dtype=bool)
    one[7] = True
    one.setflags(write=False)
    step = Step(Allowed(one, False))
    assert (step.done, step.forced()) == (False, 7)
    assert Step(Allowed(one, True)).forced() is None  # the end is allowed too: nothing forced
    del one, step
    gc.collect()
    for trial in range(200):  # new shared masks, likely at the dead one's address: counted anew
        mask = np.zeros(1000, dtype=bool)
        mask[:trial % 3] = True
        mask.setflags(write=False)
        expected = (trial % 3 == 0, 0 if trial % 3 == 1 else None)
        assert (Step(Allowed(mask, False)).done, Step(Allowed(mask, False)).forced()) == expected, trial
    writeable = np.zeros(1000, dtype=bool)
    writeable[3] = True
    assert Step(Allowed(writeable, False)).forced() == 3
    writeable[4] = True  # an array of one's own may change: never remembered
    assert Step(Allowed(writeable, False)).forced() is None
    assert Step(Allowed(None, False)).forced() is None and not Step(Allowed(None, False)).done
    assert Step(Allowed(writeable, False), stop=True).done
