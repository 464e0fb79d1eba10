"""Registers the ``hf`` backend and the Hugging Face tokenizer loader with lmql-core."""

from __future__ import annotations

from typing import Any

from lmql_core.plugin import hookimpl


def _backend(model: str, **kwargs: Any) -> Any:
    from lmql_hf.loading.bytecode import warn_if_recompiled

    warn_if_recompiled()  # before the imports it is about
    from lmql_hf.backend import HFBackend

    return HFBackend(model, **kwargs)


def _own_tokenizer(model: str, tokenizer: str | None = None) -> Any:
    """The tokenizer of an hf model (or the one named with tokenizer=)."""
    from lmql_hf.loading.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(tokenizer or model)


def _tokenizer(model: str, tokenizer: str | None = None, backend: str | None = None,
               **options: Any) -> Any:
    """A Hugging Face tokenizer named with tokenizer= for another backend's model (or for a
    model whose backend is not known)."""
    if backend == "hf" or (tokenizer is None and backend is not None):
        return None  # hf's own models: _own_tokenizer has answered; others: their backend's
    return _own_tokenizer(model, tokenizer)


@hookimpl
def register_backends(register: Any) -> None:
    from lmql_hf.options import EXTRA_OPTIONS, OPTIONS

    register("hf", _backend, models=("lmql-tiny",), options=OPTIONS, extra_options=EXTRA_OPTIONS,
             tokenizer=_own_tokenizer, description="Hugging Face transformers (CPU, CUDA, several GPUs)")


@hookimpl
def register_tokenizers(register: Any) -> None:
    register("hf", _tokenizer)
