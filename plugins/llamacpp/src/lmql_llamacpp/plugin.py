"""Registers the ``llama.cpp`` backend (prefix ``llama.cpp:``) with its tokenizer."""

from __future__ import annotations

from typing import Any

from lmql_core.hookspecs import hookimpl

BACKEND = "llama.cpp"
# the most used; every keyword argument of llama_cpp.Llama(...) is accepted
OPTIONS = {
    "n_seq_max": "sequences resident at once, each with n_ctx positions [default: 4]",
    "n_ctx": "context per sequence (0: the model's training context) [default: <= 2048]",
    "n_gpu_layers": "layers offloaded to the GPU (-1: all; --cuda sets -1) [default: 0]",
    "type_k": "KV cache type of keys: f32, f16, q8_0, ... (type_v: of values) [default: f16]",
    "n_threads": "CPU threads [default: llama.cpp's choice]",
}


def _backend(model: str, **kwargs: Any) -> Any:
    from lmql_llamacpp.backend import LlamaCppBackend

    return LlamaCppBackend(model, **kwargs)


def _tokenizer(model: str, tokenizer: str | None = None) -> Any:
    from lmql_llamacpp.tokenizer import load_llamacpp_tokenizer

    return load_llamacpp_tokenizer(model, tokenizer)


@hookimpl
def register_backends(register: Any) -> None:
    register(BACKEND, _backend, prefixes=("llama.cpp:",), options=OPTIONS, tokenizer=_tokenizer,
             description="llama.cpp through llama-cpp-python (GGUF files; CPU, or GPU offload)")
