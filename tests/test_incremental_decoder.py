"""``IncrementalDecoder`` given tokens in batches (as a paced OpenAI stream gives them, ~20 at a
time) puts together exactly the tokenizer's own decode of all the tokens, with no character split
across deltas: for a byte-level BPE (lmql-tiny's, GPT-2's kind) and a SentencePiece-style one
(a leading-space marker the decoder strips at the start of a text, byte fallback for characters
outside its vocabulary), whatever the batch sizes."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from lmql_core.loading.tokenizer import IncrementalDecoder, JsonTokenizer

TEXT = ("naïve café — 日本語 ✓ 🙂 The quick brown fox, jumps over the lazy dog.\n\n"
        "  Ünïcödé 🎉🎉 déjà vu; \"quoted\" (paren) end.  Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich.")


def byte_level() -> JsonTokenizer:
    from lmql_hf.bundled import bundled_path

    return JsonTokenizer.from_file(bundled_path("lmql-tiny") / "tokenizer.json")


def sentencepiece_style() -> JsonTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", *[f"<0x{b:02X}>" for b in range(256)]]
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog. " * 3, "café naïve déjà vu"],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    return JsonTokenizer(tok, None, None, "test")


@pytest.mark.parametrize("make", [byte_level, sentencepiece_style])
def test_tokens_in_batches_decode_to_the_tokenizers_own_text(make: Callable[[], JsonTokenizer]) -> None:
    tokenizer = make()
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    whole = tokenizer.decode(ids)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # characters split across tokens are in the text
    rng = random.Random(0)
    for largest in (1, 3, 8, 20, 40):
        decoder = IncrementalDecoder(tokenizer)
        deltas, start = [], 0
        while start < len(ids):
            size = rng.randint(1, largest)
            deltas.append(decoder.extend(ids[start : start + size]))
            start += size
        deltas.append(decoder.flush())
        assert "".join(deltas) == whole, largest
        assert not any("\ufffd" in d for d in deltas)
