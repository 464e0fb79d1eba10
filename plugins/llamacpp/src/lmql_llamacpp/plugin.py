"""Registers the ``llama.cpp`` backend (prefix ``llama.cpp:``) and its tokenizer loader."""

from __future__ import annotations

from typing import Any

from lmql_core.hookspecs import hookimpl

BACKEND = "llama.cpp"


def _backend(model: str, **kwargs: Any) -> Any:
    from lmql_llamacpp.backend import LlamaCppBackend

    return LlamaCppBackend(model, **kwargs)


def _tokenizer(model: str, tokenizer: str | None = None, backend: str | None = None,
               **options: Any) -> Any:
    if backend != BACKEND:
        return None
    from lmql_llamacpp.tokenizer import load_llamacpp_tokenizer

    return load_llamacpp_tokenizer(model, tokenizer)


@hookimpl
def register_backends(register: Any) -> None:
    register(BACKEND, _backend, prefixes=("llama.cpp:",),
             description="llama.cpp through llama-cpp-python (GGUF files; CPU, or GPU offload)")


@hookimpl
def register_tokenizers(register: Any) -> None:
    register(BACKEND, _tokenizer)
