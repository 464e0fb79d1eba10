"""The core's own plugin: the random backend, basic tokenizers and the transports."""

from __future__ import annotations

from typing import Any

from lmql_core.base.hookspecs import hookimpl
from lmql_core.base.options import Option


def _random_backend(model: str, **kwargs: Any) -> Any:
    from lmql_core.builtin.random_backend import RandomBackend

    return RandomBackend(model, **kwargs)


@hookimpl
def register_backends(register: Any) -> None:
    register("random", _random_backend, prefixes=("random:",), models=("random",),
             description="seeded random logits (no model; for tests and trying the CLI)",
             options={"seed": Option(int, 0, "the seed of the logits"),
                      "vocab_size": Option(int, 50257, "vocabulary size"),
                      "eos_token_id": Option(int, 50256, "the end-of-sequence token"),
                      "max_context": Option(int, 2048, "longest prompt + generation")},
             tokenizer=_random_tokenizer)


def _random_tokenizer(model: str, tokenizer: str | None = None) -> Any:
    return _bytes_tokenizer(model, tokenizer or "bytes")


def _bytes_tokenizer(model: str, tokenizer: str | None = None, **options: Any) -> Any:
    from lmql_core.loading.tokenizer import BytesTokenizer

    return BytesTokenizer() if tokenizer == "bytes" else None


def _json_tokenizer(model: str, tokenizer: str | None = None, **options: Any) -> Any:
    from lmql_core.loading.tokenizer import JsonTokenizer, find_tokenizer_json

    path = find_tokenizer_json(tokenizer or model)
    return JsonTokenizer.from_file(path) if path else None


@hookimpl
def register_tokenizers(register: Any) -> None:
    register("bytes", _bytes_tokenizer)
    register("tokenizer.json", _json_tokenizer)


def _websocket_transport(model_id: Any, **options: Any) -> Any:
    from lmql_core.lmtp.client import WebSocketClient

    return WebSocketClient.shared(**options)


def _in_process_transport(model_id: Any, **options: Any) -> Any:
    from lmql_core.lmtp.local import InProcessClient

    return InProcessClient.for_model(model_id, **options)


def _openai_transport(model_id: Any, **options: Any) -> Any:
    from lmql_core.openai_compat.client import OpenAIClient

    return OpenAIClient.shared(**options)


@hookimpl
def register_transports(register: Any) -> None:
    register("", _websocket_transport)
    register("local:", _in_process_transport)
    register("openai:", _openai_transport)  # any OpenAI-compatible completions server
