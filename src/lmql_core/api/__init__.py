"""The Python API: ``model``, ``serve``, ``generate``, ``score`` and friends."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from lmql_core import plugins
from lmql_core.api.llm import LLM
from lmql_core.api.scoring import ScoringResult
from lmql_core.api_names import API_NAMES
from lmql_core.errors import LMQLError
from lmql_core.identifiers import parse_model_id

if TYPE_CHECKING:
    from lmql_core.api.run_server import RunningServer

__all__ = list(API_NAMES)

_default_model: LLM | None = None


def model(name: str, *, endpoint: str | None = None, tokenizer: str | None = None,
          api_key: str | None = None, inprocess: bool = False, **loader_kwargs: Any) -> LLM:
    """A model by identifier: ``local:NAME`` (or ``inprocess=True``) loads it in this process
    with ``loader_kwargs`` (and ``tokenizer``, where the backend's factory takes one);
    otherwise it is served at ``endpoint`` (default localhost:8080)."""
    if isinstance(name, LLM):
        return name
    transports = plugins.registry().transports
    prefix = next((p for p in transports if p not in ("", "local:") and name.startswith(p)), "")
    if prefix:  # another transport's (``openai:``): the rest names the model on its server
        llm = LLM(parse_model_id(name[len(prefix):]), transports[prefix](name, endpoint=endpoint,
                                                                          api_key=api_key), tokenizer)
        if hasattr(llm.client, "use_tokenizer"):  # a transport that maps text to tokens needs the model's
            llm.client.use_tokenizer(llm.model_id.served_name, llm.resolved_tokenizer)
        return llm
    model_id = parse_model_id(("local:" if inprocess and not name.startswith("local:") else "") + name)
    if model_id.local:
        if endpoint:
            raise LMQLError(f"'{model_id}' loads the model in this process, so there is no endpoint "
                            f"to use ('{endpoint}'): drop 'local:' to use the server there, or "
                            "drop the endpoint")
        options = plugins.backend_for_name(model_id.backend).options
        loader_kwargs, engine_options = options.check_and_split(loader_kwargs)
        if tokenizer is not None and plugins.backend_takes(model_id.backend, "tokenizer"):
            loader_kwargs = {**loader_kwargs, "tokenizer": tokenizer}  # the backend's loader sees it too
        client = transports["local:"](model_id, engine_options=engine_options, **loader_kwargs)
    else:
        if loader_kwargs:
            warnings.warn(f"loader arguments {sorted(loader_kwargs)} are ignored for a served model; "
                          "pass them to `lmql serve-model` instead", stacklevel=2)
        client = transports[""](model_id, endpoint=endpoint, api_key=api_key)
    return LLM(model_id, client, tokenizer)


def serve(model: str = "lmql-tiny", **kwargs: Any) -> RunningServer | None:
    """Serve ``model`` over LMTP until stopped; ``background=True`` returns the running server
    at once (``.endpoint``, ``.stop()``, a context manager). See ``lmql_core.api.run_server.serve``."""
    from lmql_core.api.run_server import serve as run

    return run(model, **kwargs)


def set_default_model(llm: LLM | str) -> None:
    global _default_model
    _default_model = model(llm) if isinstance(llm, str) else llm


def _default() -> LLM:
    if _default_model is None:
        raise RuntimeError("no default model: call lmql.set_default_model(...) or pass model=")
    return _default_model


def _pick(llm: LLM | str | None) -> LLM:
    return _default() if llm is None else model(llm) if isinstance(llm, str) else llm


async def generate(prompt: str, max_tokens: int | None = None, model: LLM | str | None = None,
                   **kwargs: Any) -> str | list[str]:
    return await _pick(model).generate(prompt, max_tokens=max_tokens, **kwargs)


def generate_sync(prompt: str, max_tokens: int | None = None, model: LLM | str | None = None,
                  **kwargs: Any) -> str | list[str]:
    return _pick(model).generate_sync(prompt, max_tokens=max_tokens, **kwargs)


async def score(prompt: str, values: list[str] | str, model: LLM | str | None = None) -> ScoringResult:
    return await _pick(model).score(prompt, values)


def score_sync(prompt: str, values: list[str] | str, model: LLM | str | None = None) -> ScoringResult:
    return _pick(model).score_sync(prompt, values)
