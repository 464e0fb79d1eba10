"""Client-side tokenizers for HF models, without importing torch where a tokenizer.json exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmql_core.plugin import JsonTokenizer, find_tokenizer_json, vocab_fingerprint
from lmql_hf.bundled import resolve
from lmql_hf.loading.hub import hub_reachable


class TransformersTokenizer:
    """Wraps a ``transformers`` tokenizer, for models that ship no ``tokenizer.json``."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.vocab_size = len(tok)
        self.eos_token_id = tok.eos_token_id
        self.bos_token_id = tok.bos_token_id
        # a fast tokenizer that cleans up no spaces decodes to its Rust backend's text, which the
        # backend gives at a tenth of transformers' cost (the OpenAI server decodes every token)
        backend = getattr(tok, "backend_tokenizer", None)
        cleans_up = getattr(tok, "clean_up_tokenization_spaces", True)
        self._rust = backend if backend is not None and cleans_up is False else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        if self._rust is not None:
            return str(self._rust.decode(ids, skip_special_tokens=False))
        return str(self._tok.decode(ids))

    def fingerprint(self) -> str:
        return vocab_fingerprint(self._tok.get_vocab())


def cached_tokenizer_json(name: str) -> str | None:
    """The tokenizer.json of a hub model in the local Hugging Face cache (no download)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(name, "tokenizer.json")
    except ValueError:  # not a hub name (a path, say)
        return None
    return found if isinstance(found, str) else None


def load_hf_tokenizer(name: str) -> Any:
    """A bundled model, a folder, a tokenizer.json, or a hub name (from the local cache first)."""
    path = find_tokenizer_json(resolve(name)) or cached_tokenizer_json(name)
    if path:
        return JsonTokenizer.from_file(path)
    if not Path(name).expanduser().is_dir() and not hub_reachable():
        return None  # a hub name, not cached, and no hub: not ours to find (and no retries)
    try:
        from transformers import AutoTokenizer

        return TransformersTokenizer(AutoTokenizer.from_pretrained(name))
    except (OSError, ValueError):
        return None
