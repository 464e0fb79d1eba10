"""Registers the ``hf`` backend and the Hugging Face tokenizer loader with lmql-core."""

from __future__ import annotations

from typing import Any

from lmql_core.hookspecs import hookimpl


def _backend(model: str, **kwargs: Any) -> Any:
    from lmql_hf.backend import HFBackend

    return HFBackend(model, **kwargs)


def _tokenizer(model: str, tokenizer: str | None = None, backend: str | None = None,
               **options: Any) -> Any:
    from lmql_hf.tokenizer import load_hf_tokenizer

    if tokenizer is None and backend not in (None, "hf"):
        return None  # another backend's model: only an explicit tokenizer= is ours to load
    return load_hf_tokenizer(tokenizer or model)


@hookimpl
def register_backends(register: Any) -> None:
    from lmql_hf.options import option_help

    register("hf", _backend, models=("lmql-tiny",), options=option_help(),
             description="Hugging Face transformers (CPU, CUDA, several GPUs)")


@hookimpl
def register_tokenizers(register: Any) -> None:
    register("hf", _tokenizer)
