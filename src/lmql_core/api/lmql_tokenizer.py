"""``lmql.tokenizer(NAME)``: a model's tokenizer with the interface LMQL 0.7 programs use.

LMQL's ``LMQLTokenizer`` is called on text for ``{"input_ids": [...]}`` (no special tokens
unless asked), ``tokenize``s text into its tokens and ``decode``s ids; one instance per name.
"""

from __future__ import annotations

from typing import Any

from lmql_core.loading import plugin_manager
from lmql_core.loading.identifiers import parse_model_id
from lmql_core.loading.tokenizer import Tokenizer, load_tokenizer

_loaded: dict[str, LMQLTokenizer] = {}


class LMQLTokenizer:
    def __init__(self, model_identifier: str, tokenizer: Tokenizer) -> None:
        self.model_identifier = model_identifier
        self.tokenizer_impl = tokenizer

    def __repr__(self) -> str:
        return f"<LMQLTokenizer '{self.model_identifier}'>"

    @property
    def name(self) -> str:
        return self.model_identifier

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer_impl.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer_impl.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer_impl.vocab_size

    model_vocab_size = vocab_size

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        """``{"input_ids": ids}`` of ``text`` (of each text, for a list)."""
        if isinstance(text, list):
            return {"input_ids": [self.tokenizer_impl.encode(t, add_special_tokens) for t in text]}
        return {"input_ids": self.tokenizer_impl.encode(text, add_special_tokens)}

    def tokenize(self, text: str, asbytes: bool = False) -> list[Any]:
        """The text of each of ``text``'s tokens (UTF-8 bytes with ``asbytes``)."""
        pieces = [self.tokenizer_impl.decode([i]) for i in self.tokenizer_impl.encode(text, False)]
        return [p.encode("utf-8") for p in pieces] if asbytes else pieces

    def decode(self, input_ids: list[int]) -> str:
        return self.tokenizer_impl.decode([int(i) for i in input_ids])


def tokenizer(model_identifier: str, type: str = "auto", **kwargs: Any) -> LMQLTokenizer:  # noqa: A002 (LMQL's name)
    """The tokenizer of ``model_identifier`` (a model name or folder; ``local:`` is dropped),
    loaded once per process. ``type`` (LMQL's backend choice) is accepted; the loaders
    installed decide."""
    name = model_identifier.removeprefix("local:")
    transport = next((p for p in plugin_manager.registry().transports if p and name.startswith(p)), "")
    name = name[len(transport):]  # ``openai:NAME``: the model NAME on another kind of server
    if name not in _loaded:
        model_id = parse_model_id(name)  # ``llama.cpp:PATH``: that backend's own loader first
        found = load_tokenizer(model_id.model, kwargs.get("tokenizer"), model_id.backend)
        _loaded[name] = LMQLTokenizer(model_identifier, found)
    return _loaded[name]
