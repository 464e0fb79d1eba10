"""Registers the ``llama.cpp`` backend (prefix ``llama.cpp:``) with its tokenizer."""

from __future__ import annotations

from typing import Any

from lmql_core.hookspecs import hookimpl
from lmql_core.options import Option

BACKEND = "llama.cpp"
# the most used; every keyword argument of llama_cpp.Llama(...) is accepted (llama_parameters)
OPTIONS = {
    "n_seq_max": Option(int, 4, "sequences resident at once, each with n_ctx positions"),
    "n_ctx": Option(int, None, "context per sequence (0: the model's training context) [default: <= 2048]"),
    "n_gpu_layers": Option(int, 0, "layers offloaded to the GPU (-1: all; --cuda sets -1)"),
    "type_k": Option(str | int, "f16", "KV cache type of keys: f32, f16, q8_0, ..."),
    "type_v": Option(str | int, "f16", "KV cache type of values"),
    "n_threads": Option(int | None, None, "CPU threads [default: llama.cpp's choice]"),
}


def llama_parameters() -> list[str]:
    """The keyword arguments ``llama_cpp.Llama(...)`` takes (imports llama_cpp: asked only when a
    loader option beyond OPTIONS comes)."""
    import inspect

    from llama_cpp import Llama

    parameters = inspect.signature(Llama.__init__).parameters
    return [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]


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
