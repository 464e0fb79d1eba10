"""A real byte-level BPE vocabulary for the mask tests, trained here (nothing downloads)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from lmql_core.loading.tokenizer import JsonTokenizer


def trained_bpe(folder: Path, vocab: int = 8192) -> JsonTokenizer:
    """A byte-level BPE of ``vocab`` tokens (EOS ``<|endoftext|>`` first) trained on part of the
    standard library's sources, saved in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted(stdlib.glob("*.py"))[:120]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts + ["2024-05-17 Monday Tuesday next week äöüß 東京"], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    path = folder / "tokenizer.json"
    tok.save(str(path))
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    loaded = JsonTokenizer.from_file(path)
    assert loaded.vocab_size == vocab and loaded.eos_token_id == 0
    return loaded
