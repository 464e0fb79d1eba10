"""The llama.cpp backend's loader options: those it lists, and every keyword argument of
``llama_cpp.Llama(...)`` beside them. Kept free of llama_cpp until such an argument comes."""

from __future__ import annotations

from lmql_core.plugin import Option

DEFAULT_SEQUENCES = 4  # sequences resident at once (memory: n_seq_max x n_ctx positions)

# the most used; every keyword argument of llama_cpp.Llama(...) is accepted (llama_parameters)
OPTIONS = {
    "n_seq_max": Option(int, DEFAULT_SEQUENCES, "sequences resident at once, each with n_ctx positions"),
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
