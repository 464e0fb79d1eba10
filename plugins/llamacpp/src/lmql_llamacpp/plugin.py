"""Registers the ``llama.cpp`` backend (prefix ``llama.cpp:``) with its tokenizer."""

from __future__ import annotations

from typing import Any

from lmql_core.plugin import hookimpl
from lmql_llamacpp.options import OPTIONS, llama_parameters

BACKEND = "llama.cpp"


def _backend(model: str, **kwargs: Any) -> Any:
    from lmql_llamacpp.backend import LlamaCppBackend

    return LlamaCppBackend(model, **kwargs)


def _tokenizer(model: str, tokenizer: str | None = None) -> Any:
    from lmql_llamacpp.tokenizer import load_llamacpp_tokenizer

    return load_llamacpp_tokenizer(model, tokenizer)


@hookimpl
def register_backends(register: Any) -> None:
    register(BACKEND, _backend, prefixes=("llama.cpp:",), options=OPTIONS, extra_options=llama_parameters,
             tokenizer=_tokenizer,
             description="llama.cpp through llama-cpp-python (GGUF files; CPU, or GPU offload)")
