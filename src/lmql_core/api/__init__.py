"""The Python API: ``model``, ``serve``, ``generate``, ``score`` and friends."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from lmql_core.api.llm import LLM
from lmql_core.api.model_options import split_model_options
from lmql_core.api.scoring import ScoringResult
from lmql_core.base.api_names import API_NAMES
from lmql_core.errors import LMQLError
from lmql_core.loading import plugin_manager
from lmql_core.loading.identifiers import parse_model_id

if TYPE_CHECKING:
    from lmql_core.serving.run import RunningServer

__all__ = list(API_NAMES)

_default_model: LLM | None = None


def model(name: str, *, endpoint: str | None = None, tokenizer: str | None = None,
          api_key: str | None = None, inprocess: bool = False, **kwargs: Any) -> LLM:
    """A model by identifier: ``local:NAME`` (or ``inprocess=True``) loads it in this process,
    on first use, with the loader's keyword arguments (and ``tokenizer``, where the backend's factory takes
    one); otherwise it is served at ``endpoint`` (default localhost:8080). LMQL 0.7's own
    options (``silent``, ``chunksize``, ``batch_size``, ``top_k``, ...) mean what they mean
    there (``model_options``)."""
    if isinstance(name, LLM):
        return name
    transports = plugin_manager.registry().transports
    prefix = next((p for p in transports if p not in ("", "local:") and name.startswith(p)), "")
    # as LMQL: the random model runs in-process (here unless an endpoint says where it is served)
    in_process = inprocess or (name == "random" and endpoint is None)
    if prefix:  # another transport's (``openai:``): the rest names the model on its server
        model_id = parse_model_id(name[len(prefix):])
    else:
        model_id = parse_model_id(("local:" if in_process and not name.startswith("local:") else "") + name)
    options = split_model_options(kwargs, model_id.local, model_id.backend)
    if model_id.local:
        if endpoint:
            raise LMQLError(f"'{model_id}' loads the model in this process, so there is no endpoint "
                            f"to use ('{endpoint}'): drop 'local:' to use the server there, or "
                            "drop the endpoint")
        loader_options = plugin_manager.backend_for_name(model_id.backend).options
        loader_kwargs, engine_options = loader_options.check_and_split(options.loader)
        client_tokenizer = tokenizer
        if tokenizer is not None and plugin_manager.backend_takes(model_id.backend, "tokenizer"):
            # the backend's loader takes it (when the model loads, on first use) and the
            # in-process session serves it: the client asks the session for it then
            loader_kwargs = {**loader_kwargs, "tokenizer": tokenizer}
            client_tokenizer = None
        # loads on first use, as LMQL's in-process models do; silent=True loads without a word
        client = transports["local:"](model_id, engine_options=engine_options, silent=options.silent,
                                      **loader_kwargs)
    else:
        if options.loader:
            warnings.warn(f"loader arguments {sorted(options.loader)} are ignored for a served model; "
                          "pass them to `lmql serve-model` instead", stacklevel=2)
        client = transports[prefix](model_id, endpoint=endpoint, api_key=api_key)
        client_tokenizer = tokenizer
    llm = LLM(model_id, client, client_tokenizer, decoding=options.decoding, transport=prefix)
    if hasattr(client, "use_tokenizer"):  # a transport that maps text to tokens needs the model's
        client.use_tokenizer(model_id.served_name, llm.resolve_tokenizer)
    given = {"endpoint": endpoint, "tokenizer": tokenizer, "api_key": api_key, "inprocess": inprocess or None}
    # as LMQL's LLM.configuration: the options it was made with
    llm.configuration = {**{k: v for k, v in given.items() if v is not None}, **kwargs}
    return llm


def serve(model: str = "lmql-tiny", **kwargs: Any) -> RunningServer | None:
    """Serve ``model`` over LMTP until stopped; ``background=True`` returns the running server
    at once (``.endpoint``, ``.stop()``, a context manager). See ``lmql_core.serving.run.serve``."""
    from lmql_core.serving.run import serve as run

    return run(model, **kwargs)


def set_default_model(llm: LLM | str) -> None:
    """The model of queries and calls that name none (this process)."""
    global _default_model
    _default_model = model(llm) if isinstance(llm, str) else llm


def get_default_model() -> LLM | None:
    """The model set by ``set_default_model``, else the one ``LMQL_DEFAULT_MODEL`` names (an
    identifier, as LMQL reads it), else None."""
    if _default_model is None and os.environ.get("LMQL_DEFAULT_MODEL"):
        set_default_model(os.environ["LMQL_DEFAULT_MODEL"])
    return _default_model


def get_default_scoring_model() -> LLM | None:
    """The model ``score`` uses when given none (LMQL keeps a separate one for OpenAI's sake)."""
    return get_default_model()


def _default() -> LLM:
    default = get_default_model()
    if default is None:
        raise RuntimeError("no default model: call lmql.set_default_model(...) or pass model=")
    return default


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
