"""A byte-level BPE trained on this machine's text (nothing downloads): the benchmarks' large
vocabularies, where a model folder has no tokenizer or a test needs a 151k one."""

from __future__ import annotations

import glob
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
# Carried to the GPU machine beside the wheels, so that its runs need not train one (a minute there).
CARRIED = Path(__file__).resolve().parent.parent / ".whl"


def _texts(corpus_globs: list[str], max_chars: int) -> Iterator[str]:
    total = 0
    for pattern in corpus_globs:
        for name in sorted(glob.glob(pattern, recursive=True)):
            text = Path(name).read_text(encoding="utf-8", errors="ignore")
            total += len(text)
            yield text
            if total > max_chars:
                return


def train_bpe(corpus_globs: list[str], vocab: int, *, eos_last: bool = False, min_frequency: int = 0,
              max_chars: int = 120_000_000) -> Any:
    """``vocab`` tokens, ``EOS`` among them: its id is 0, or ``vocab - 1`` with ``eos_last`` (GPT-2's
    place for it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 1 if eos_last else vocab, min_frequency=min_frequency,
                                  special_tokens=[] if eos_last else [EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(corpus_globs, max_chars), trainer)
    if eos_last:
        tok.add_special_tokens([EOS])
    return tok


def python_sources_bpe(vocab: int = 50257) -> Path:
    """The ``tokenizer.json`` of a ``vocab``-token BPE trained on this machine's Python sources,
    EOS last (GPT-2's 50,256 at 50,257): kept in the temporary folder and reused, or copied from
    ``.whl/`` where a GPU run carries one (``cp THIS_PATH .whl/`` on the machine that trained it)."""
    path = Path(tempfile.gettempdir()) / f"lmql-bench-bpe-{vocab}" / "tokenizer.json"
    carried = CARRIED / f"lmql-bench-bpe-{vocab}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if carried.exists():
            shutil.copyfile(carried, path)
        else:
            paths = sysconfig.get_paths()
            sources = [f"{paths['stdlib']}/**/*.py", f"{paths['purelib']}/**/*.py"]
            tok = train_bpe(sources, vocab, eos_last=True, max_chars=80_000_000)
            assert tok.get_vocab_size() == vocab, f"trained {tok.get_vocab_size()}: more text is needed"
            tok.save(str(path))
    return path
