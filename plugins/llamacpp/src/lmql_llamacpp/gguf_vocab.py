"""A ``tokenizer.json`` rebuilt from the vocabulary inside a GGUF file.

Every GGUF file carries its vocabulary (``tokenizer.ggml.*`` metadata), since llama.cpp needs
one to load the model. lmql tokenizes on the client with HF ``tokenizers``, so a server that has
no ``tokenizer.json`` for a model rebuilds one from that vocabulary, tokenizing as llama.cpp does:

* ``gpt2`` (byte-level BPE): the stored tokens and merges, after the split that the file's
  ``tokenizer.ggml.pre`` names: GPT-2's regex (``gpt-2`` and kin, and files without a name or
  with ``default``), Llama 3's (with whole-word lookup before merging, as llama.cpp does) or
  Qwen 2's. Any other name gives None: a wrong split yields plausible but different ids.
* ``llama`` (SentencePiece): llama.cpp writes spaces as ``▁``, prepends one (unless
  ``tokenizer.ggml.add_space_prefix`` is false), repeatedly joins the adjacent pair whose text is
  the highest-scoring token, and spells what is left as ``<0xNN>`` byte tokens. That is a BPE
  whose merges are all splits of a token into two tokens, ranked by the joined token's score,
  with byte fallback. It departs from llama.cpp only where two *different* tokens of exactly
  equal score compete for a symbol (llama.cpp joins the leftmost pair; here the lower id wins),
  or where a character that is not a token by itself begins a longer token (BPE spells such a
  character as bytes at once). SentencePiece models have distinct scores for their pieces.
* any other vocabulary (``bert``, ``t5``, ``rwkv``, ...): None.

Control (and unknown) tokens become special added tokens, user-defined ones plain added tokens
(llama.cpp matches both whole in the text); converter padding (``[PAD<id>]``, type unused) is
left out, so the vocabulary, and lmql's fingerprint of it, equals that of the tokenizer.json
the file was made from. BOS/EOS ids are no part of a tokenizer.json: the backend reads them.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # tokenizer.ggml.token_type

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
GPT2_NAMES = ("default", "gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais", "gigachat", "trillion")
# tokenizer.ggml.pre -> (split regex, or None for GPT-2's (ByteLevel's own); ignore_merges)
PRE_TOKENIZERS: dict[str, tuple[str | None, bool]] = {
    **dict.fromkeys(GPT2_NAMES, (None, False)),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), (LLAMA3_SPLIT, True)),
    **dict.fromkeys(("qwen2", "megrez"), (QWEN2_SPLIT, False)),
}

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class UnsupportedVocabulary(ValueError):
    pass


class _Reader:
    """Sequential reads of GGUF values (little- or big-endian) from a buffer."""

    def __init__(self, data: mmap.mmap, order: str, offset: int) -> None:
        self.data, self.order, self.offset = data, order, offset

    def scalars(self, code: str, count: int) -> list[Any]:
        fmt = f"{self.order}{count}{code}"
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return list(values)

    def string(self) -> str:
        (size,) = struct.unpack_from(self.order + "Q", self.data, self.offset)
        start = self.offset + 8
        self.offset = start + size
        return self.data[start : self.offset].decode("utf-8")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalars("I", 1)[0], self.scalars("Q", 1)[0]
            if item in (_STRING, _ARRAY):
                return [self.value(item) for _ in range(count)]
            return self.scalars(_code(item), count)
        return self.scalars(_code(kind), 1)[0]


def _code(kind: int) -> str:
    if kind not in _SCALARS:
        raise ValueError(f"unknown GGUF value type {kind}")
    return _SCALARS[kind]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A GGUF file's key/value metadata, arrays as lists (the tensors are not read)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"
        reader = _Reader(data, order, 4)
        version, _n_tensors, n_kv = reader.scalars("I", 1)[0], *reader.scalars("Q", 2)
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = reader.string()
            metadata[key] = reader.value(reader.scalars("I", 1)[0])
        return metadata


def tokenizer_json_from_gguf(path: str | os.PathLike[str]) -> str | None:
    """The ``tokenizer.json`` text for the vocabulary in the GGUF file ``path``, or None (logged)
    when the file has a kind of vocabulary that cannot be rebuilt faithfully."""
    try:
        return build_tokenizer(read_metadata(path)).to_str()
    except UnsupportedVocabulary as e:
        log.warning("no tokenizer from the vocabulary in %s: %s", path, e)
    except Exception as e:  # noqa: BLE001 (a bad file; tokenizers raises plain Exception)
        log.warning("could not rebuild a tokenizer from %s: %s: %s", path, type(e).__name__, e)
    return None


def build_tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` for a GGUF file's ``tokenizer.ggml.*`` metadata."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens: list[str] = metadata.get("tokenizer.ggml.tokens") or []
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if not tokens or len(types) != len(tokens):
        raise UnsupportedVocabulary("no token list (or token types that do not match it)")
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(metadata, tokens, types)
    elif kind == "llama":
        tokenizer = _sentencepiece(metadata, tokens, types)
    else:
        raise UnsupportedVocabulary(f"'{kind}' vocabularies are not supported (only gpt2 and llama)")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, k in zip(tokens, types, strict=True) if k in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED])
    return tokenizer


def _vocab(tokens: list[str], types: list[int]) -> dict[str, int]:
    """Text -> id (the last id for a repeated text, as in llama.cpp), without padding."""
    return {text: i for i, (text, kind) in enumerate(zip(tokens, types, strict=True))
            if not (kind == UNUSED and text == f"[PAD{i}]")}


def _merge(text: str) -> tuple[str, str]:
    cut = text.find(" ", 1)  # as llama.cpp: a merge's left part may be a space itself
    if cut < 0:
        raise UnsupportedVocabulary(f"malformed merge {text!r}")
    return text[:cut], text[cut + 1 :]


def _byte_level_bpe(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    pre = metadata.get("tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedVocabulary(f"the pre-tokenizer '{pre}' is not one of {', '.join(PRE_TOKENIZERS)}")
    if "tokenizer.ggml.merges" not in metadata:
        raise UnsupportedVocabulary("a gpt2 vocabulary without merges")
    split, ignore_merges = PRE_TOKENIZERS[pre]
    merges = [_merge(m) for m in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(_vocab(tokens, types), merges, ignore_merges=ignore_merges))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    scores: list[float] | None = metadata.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise UnsupportedVocabulary("a llama vocabulary without a score for every token")
    vocab = _vocab(tokens, types)
    ranked = sorted((-scores[i], i, cut, text) for text, i in vocab.items()
                    for cut in range(1, len(text)) if text[:cut] in vocab and text[cut:] in vocab)
    merges = [(text[:cut], text[cut:]) for _, _, cut, text in ranked]
    unk = next((t for t, k in zip(tokens, types, strict=True) if k == UNKNOWN), None)
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    space = normalizers.Replace(" ", "▁")
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if metadata.get("tokenizer.ggml.add_space_prefix", True):
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), space])
        steps.append(decoders.Strip(" ", 1, 0))
    else:
        tokenizer.normalizer = space
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer
