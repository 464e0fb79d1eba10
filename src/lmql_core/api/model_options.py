"""LMQL 0.7's own ``lmql.model(...)`` options, and what each means here.

In LMQL, ``lmql.model(NAME, **kwargs)`` hands its keyword arguments to several places at once:
the client's decoding (``chunksize`` and the sampling options sent with every request), the
in-process server (``silent``, ``batch_size``, ``loader``, ``bits``, ``cuda``) and, for what is
left, the model's loader (``from_pretrained``). Here each goes to its one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmql_core.errors import LMQLError

# sent with every GENERATE the model is asked (LMTPDcModel.extra_decoding_parameters), and
# chunksize: how many tokens one request asks for when no constraint bounds the variable
DECODING = ("chunksize", "top_k", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
            "length_penalty")
# LMQL client options with no effect on what is generated: request logging, and its
# logit truncation and transport choice (here the transport follows ``local:``)
CLIENT_ONLY = ("verbose", "truncation_threshold", "async_transport")
# LMQL's in-process server options: meaningless for a model served elsewhere, as in LMQL
IN_PROCESS = ("silent", "loader", "batch_size", "bits")
# What LMQL 0.7.3's lmql.generate(prompt, **kwargs) hands its query runtime and never puts in a
# request: PromptInterpreter.EXTRA_DECODER_ARGS less the decoding options its LMTP client sends
# (LMTPDcModel's EXTRA_DECODING_PARAMETERS), and the argmax/sample decoders' max_len. They log,
# cache, trace, size requests (chunksize) or concern OpenAI's API; none changes a request here.
RUNTIME_ONLY = ("verbose", "cache", "chunksize", "max_len", "max_length", "output_writer", "step_budget",
                "chunk_timeout", "chatty_openai", "openai_chunksize", "openai_nonstop",
                "distribution_batch_size", "stats", "performance_stats", "show_speculative", "alpha")
QUANTIZED = {4: "4bit", 8: "8bit"}  # LMQL's bits=4/8: the backend's quantized dtypes


@dataclass
class ModelOptions:
    loader: dict[str, Any] = field(default_factory=dict)  # for the backend's factory (local) or nobody
    decoding: dict[str, Any] = field(default_factory=dict)
    silent: bool = False


def split_model_options(kwargs: dict[str, Any], local: bool, backend: str) -> ModelOptions:
    """``lmql.model``'s keyword arguments sorted by where LMQL 0.7 sends them."""
    options = ModelOptions()
    for key, value in kwargs.items():
        if key in DECODING:
            options.decoding[key] = value
        elif key in CLIENT_ONLY:
            continue
        elif key == "silent":
            options.silent = bool(value)
        elif key in IN_PROCESS and not local:
            continue  # LMQL passes these to an in-process server only
        elif key == "batch_size":
            options.loader["max_batch"] = value
        elif key == "loader":
            _check_loader(value, backend)
        elif key == "bits":
            if value in QUANTIZED:
                options.loader.setdefault("dtype", QUANTIZED[value])
            elif value not in (16, 32, None):
                raise LMQLError(f"bits={value!r}: LMQL's bits= takes 4 or 8 (quantized) or 16")
        else:
            options.loader[key] = value
    return options


def _check_loader(loader: Any, backend: str) -> None:
    """LMQL's ``loader=`` names its in-process loader; here the backend comes from the model
    identifier, so only the name of the backend the identifier already picks is accepted."""
    same = {"transformers": "hf", "llama.cpp": "llama.cpp"}
    if same.get(str(loader)) == backend or loader == backend:
        return
    raise LMQLError(f"loader={loader!r}: lmql-core picks the backend from the model identifier "
                    f"(this one uses '{backend}'); name another with its prefix, e.g. 'local:llama.cpp:PATH'")


def without_runtime_options(options: dict[str, Any]) -> dict[str, Any]:
    """``lmql.generate``'s keyword arguments less LMQL's runtime-only ones (``RUNTIME_ONLY``)."""
    return {k: v for k, v in options.items() if k not in RUNTIME_ONLY}
