"""Client-side tokenizers: the interface, a ``tokenizers``-based one, and streaming decode."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from lmql_core.errors import TokenizerNotFound
from lmql_core.loading import plugin_manager


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_id: int | None
    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def fingerprint(self) -> str: ...


class JsonTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library (no torch)."""

    def __init__(self, tok: Any, bos_token_id: int | None, eos_token_id: int | None,
                 source: str = "") -> None:
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.source = source
        self._fingerprint: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> JsonTokenizer:
        """``path`` is a tokenizer.json; BOS and EOS come from the tokenizer_config.json beside it."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        tok = HFTokenizer.from_file(str(path))
        config = _read_json(path.with_name("tokenizer_config.json"))
        bos, eos = (_token_text(config.get(key)) for key in ("bos_token", "eos_token"))
        return cls(tok, _id(tok, bos), _id(tok, eos), str(path))

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> JsonTokenizer:
        """From what a server sends: ``{"tokenizer_json", "bos_token_id", "eos_token_id"}``."""
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_str(spec["tokenizer_json"])
        return cls(tok, spec.get("bos_token_id"), spec.get("eos_token_id"), spec.get("source", "server"))

    def spec(self) -> dict[str, Any]:
        return {"tokenizer_json": self._tok.to_str(), "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id, "fingerprint": self.fingerprint()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # hashing a large vocabulary takes a while: once is enough
            self._fingerprint = vocab_fingerprint(self._tok.get_vocab(with_added_tokens=True))
        return self._fingerprint


def vocab_fingerprint(vocab: dict[str, int]) -> str:
    """Equal for tokenizers that map the same strings to the same ids, whatever their file format."""
    canonical = json.dumps(sorted(vocab.items(), key=lambda item: item[1]), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class BytesTokenizer:
    """UTF-8 bytes as token ids 0..255; larger ids decode as ``<|id|>``. For the random backend."""

    def __init__(self, vocab_size: int = 50257, eos_token_id: int | None = 50256) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.bos_token_id: int | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                pending.append(i)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            out.append("<|endoftext|>" if i == self.eos_token_id else f"<|{i}|>")
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def fingerprint(self) -> str:
        return f"bytes-{self.vocab_size}-{self.eos_token_id}"

    def spec(self) -> dict[str, Any]:
        return {"kind": BYTES_KIND, "vocab_size": self.vocab_size, "bos_token_id": None,
                "eos_token_id": self.eos_token_id, "fingerprint": self.fingerprint()}


BYTES_KIND = "bytes"
SENDABLE = (JsonTokenizer, BytesTokenizer)  # the tokenizers a client can rebuild from their spec()


def sendable(tokenizer: Tokenizer | None) -> TypeGuard[JsonTokenizer | BytesTokenizer]:
    """Whether a client can rebuild ``tokenizer`` from what a server sends (TOKENIZER)."""
    return isinstance(tokenizer, SENDABLE)


def spec_of(tokenizer: Tokenizer) -> dict[str, Any] | None:
    """What a server sends (TOKENIZER) for ``tokenizer``, or None for one a client cannot rebuild."""
    return tokenizer.spec() if sendable(tokenizer) else None


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    """The tokenizer a server sent: ``{"tokenizer_json", ...}`` or ``{"kind": "bytes", ...}``."""
    if spec.get("kind") == BYTES_KIND:
        return BytesTokenizer(int(spec["vocab_size"]), spec.get("eos_token_id"))
    return JsonTokenizer.from_spec(spec)


HELD = 16  # tokens of unfinished text held back at most (IncrementalDecoder)
# emitted tokens kept before the new ones as the next window's context (IncrementalDecoder): a
# character spans at most 4 bytes; one token is all a leading-space rule (SentencePiece) needs
CONTEXT_TOKENS = 4


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without splitting UTF-8 characters.

    A token that ends inside a multi-byte character decodes to U+FFFD; its text is held back
    until a later token completes the character. Only a short window of recent tokens is decoded
    per call (the tokens since the last emitted text, after the last CONTEXT_TOKENS of the ones
    before it as context), so a long stream costs linear, not quadratic, time; tokens given
    together (``extend``) are decoded together, at the cost of one token (a paced OpenAI stream
    gives ~20 at a time: their window is those 20 after 4, not after the 20 before them).
    """

    def __init__(self, tokenizer: Tokenizer, skip: set[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.skip = skip or set()
        self.ids: list[int] = []
        self.context = 0  # window start: tokens before it are emitted and never decoded again
        self.emitted = 0  # tokens whose text has been emitted

    def push(self, token: int) -> str:
        return self.extend((token,))

    def extend(self, tokens: Iterable[int]) -> str:
        """The text that ``tokens``, appended, complete (all of it but an unfinished character)."""
        skip = self.skip
        self.ids.extend([t for t in tokens if t not in skip] if skip else tokens)
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        if self.emitted == len(self.ids):  # nothing new (a skipped token): nothing to decode
            return ""
        done = self.tokenizer.decode(self.ids[self.context : self.emitted])
        text = self.tokenizer.decode(self.ids[self.context :])
        end = len(self.ids)
        if not final and _unfinished(text, done):
            if end - self.emitted <= HELD:
                return ""
            # held for more than HELD tokens: a character spans at most 4 bytes, so what ends
            # unfinished in the last tokens is all that may still form one; the rest goes out
            # (holding bytes that will never form a character made every call re-decode a
            # growing window); none of it completes: given out as it decodes
            end, text = self._last_complete(done, text)
        self.context, self.emitted = max(self.emitted, end - CONTEXT_TOKENS), end
        return text[len(done) :]

    def _last_complete(self, done: str, text: str) -> tuple[int, str]:
        """The latest of the last 4 token boundaries where the text is complete, and the text
        up to it; else all the tokens and their ``text``."""
        for end in range(len(self.ids) - 1, max(self.emitted, len(self.ids) - 4), -1):
            shorter = self.tokenizer.decode(self.ids[self.context : end])
            if not _unfinished(shorter, done):
                return end, shorter
        return len(self.ids), text


def _unfinished(text: str, done: str) -> bool:
    """Whether ``text`` (the window's) ends inside a character (or is shorter than what was given
    out of it: a decoder that rewrites the end)."""
    return len(text) < len(done) or text.endswith("\ufffd")


def _id(tok: Any, text: str | None) -> int | None:
    return tok.token_to_id(text) if text else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "</s>", ...} in newer tokenizer configs
        value = value.get("content")
    return value if isinstance(value, str) else None


def find_tokenizer_json(name: str) -> Path | None:
    """``name`` is a tokenizer.json file or a folder holding one."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".json":
        return path
    if (path / "tokenizer.json").is_file():
        return path / "tokenizer.json"
    return None


def load_tokenizer(model: str, tokenizer: str | None = None, backend: str | None = None) -> Tokenizer:
    """The tokenizer the backend registered with its factory first, then every registered
    tokenizer loader in turn; the first that knows the model wins."""
    loaders = _loaders(backend)
    for loader in loaders.values():
        found = loader(model, tokenizer=tokenizer, backend=backend)
        if found is not None:
            return found
    wanted = f"'{tokenizer}'" if tokenizer else f"the model '{model}'"
    raise TokenizerNotFound(
        f"No tokenizer found for {wanted}. Pass tokenizer=... naming a folder with a "
        "tokenizer.json, a tokenizer.json file, or a Hugging Face model name (needs lmql-hf); "
        f"loaders tried: {', '.join(loaders) or 'none'}"
    )


def _loaders(backend: str | None) -> dict[str, Callable[..., Tokenizer | None]]:
    registry = plugin_manager.registry()
    spec = registry.backends.get(backend or "")
    own = spec.tokenizer if spec is not None else None
    if own is None:
        return dict(registry.tokenizers)

    def own_loader(model: str, tokenizer: str | None = None, **_: Any) -> Tokenizer | None:
        return own(model, tokenizer=tokenizer)

    return {f"the {backend} backend's own": own_loader, **registry.tokenizers}
