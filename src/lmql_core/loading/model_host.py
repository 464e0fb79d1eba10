"""The models this process serves: loaded into engines, for the server and the `local:` transport alike."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lmql_core.base.backend import Backend, ChatTemplates, contract_problems
from lmql_core.base.options import format_kwargs
from lmql_core.engine.constraints import GrammarCompiler
from lmql_core.engine.engine import Engine
from lmql_core.errors import LMQLError, ModelLoadError, RequestError, shown
from lmql_core.lmtp import wire
from lmql_core.lmtp.template import VERSION as TEMPLATE_VERSION
from lmql_core.loading import plugin_manager
from lmql_core.loading.identifiers import ModelId, parse_model_id
from lmql_core.loading.tokenizer import JsonTokenizer, Tokenizer, sendable

log = logging.getLogger(__name__)


def constraints_installed() -> bool:
    """Whether llguidance is there (found, not imported: MODEL_INFO stays cheap)."""
    return importlib.util.find_spec("llguidance") is not None


@dataclass
class LoadedModel:
    model_id: ModelId
    backend: Backend
    engine: Engine
    loader_kwargs: dict[str, Any]
    # ``tokenizer(model, tokenizer=None)``: what the backend's plugin gave ``register(..., tokenizer=)``
    tokenizer_loader: Callable[..., Any] | None = None

    @cached_property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, used for requests in text mode and sent to clients that ask
        (TOKENIZER): the backend's own ``tokenizer_json()``, else the one its plugin registered
        (``register(..., tokenizer=...)``), else None (clients then bring their own)."""
        return self.own_tokenizer() or self.registered_tokenizer()

    def own_tokenizer(self) -> Tokenizer | None:
        try:
            content = self.backend.tokenizer_json()
        except Exception:  # the model serves fine without: the registered one, or the client's
            log.exception("could not read the tokenizer of %s", self.model_id.served_name)
            return None
        if content is None:
            return None
        return JsonTokenizer.from_spec({"tokenizer_json": content, "source": self.model_id.served_name,
                                        "bos_token_id": self.backend.bos_token_id,
                                        "eos_token_id": self.backend.eos_token_id})

    def registered_tokenizer(self) -> Tokenizer | None:
        """The plugin's ``tokenizer(model, tokenizer=...)``, given the ``tokenizer=`` the model was
        loaded with (``local:``), if any."""
        if self.tokenizer_loader is None:
            return None
        requested = self.loader_kwargs.get("tokenizer")
        try:
            found: Tokenizer | None = self.tokenizer_loader(
                self.model_id.model, tokenizer=requested if isinstance(requested, str) else None)
        except Exception:  # as with the backend's own: the model still serves token ids
            log.exception("the tokenizer registered for %s failed", self.model_id.served_name)
            return None
        return found

    def extensions(self) -> dict[str, Any]:
        """LMTP extensions this model supports, advertised in MODEL_INFO (LMQL 0.7 ignores them):
        the fingerprint of a tokenizer it can send (TOKENIZER), text mode, CANCEL, the
        constraints a GENERATE may carry (``wire.CONSTRAINT_FIELDS``; they need a tokenizer), CHAT
        (the backend renders chat templates), and
        the version of the template extension (``lmtp/template.py``; None: not run)."""
        tokenizer = self.tokenizer  # asked, not spec()'d: a spec holds the whole vocabulary
        runs_templates = self.runs_templates()  # what constraints need too, with llguidance
        constraints = list(wire.CONSTRAINT_FIELDS) if runs_templates and constraints_installed() else []
        return {"tokenizer": tokenizer.fingerprint() if sendable(tokenizer) else None,
                "text": tokenizer is not None, "cancel": True, "constraints": constraints,
                "chat": isinstance(self.backend, ChatTemplates),
                "template": TEMPLATE_VERSION if runs_templates else None}

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str | None:
        """The prompt the model's chat template makes of ``messages`` (``ChatTemplates``); None
        where it has none. Off the event loop: the first call loads the template."""
        if not isinstance(self.backend, ChatTemplates):
            return None
        return await asyncio.to_thread(self.backend.chat_prompt, messages)

    def runs_templates(self) -> bool:
        """Whether a GENERATE may carry a template (its extension; asked per request, so without
        ``extensions``' look-up of llguidance on disk, ~0.1 ms)."""
        return sendable(self.tokenizer) and self.backend.eos_token_id is not None

    @cached_property
    def grammars(self) -> GrammarCompiler:
        """Compiles this model's constraints (``engine/constraints.py``), with its cache."""
        return GrammarCompiler(self.tokenizer, self.backend.vocab_size, self.backend.eos_token_id)

    def info(self) -> dict[str, Any]:
        spec = plugin_manager.backend_for_name(self.model_id.backend)
        info = {
            "model": self.model_id.served_name,
            "backend": self.model_id.backend,
            "distribution": spec.distribution,
            "vocab_size": self.backend.vocab_size,
            "eos_token_id": self.backend.eos_token_id,
            "bos_token_id": self.backend.bos_token_id,
            "max_context": self.backend.max_context,
            "loader_kwargs": {k: repr(v) for k, v in self.loader_kwargs.items()},
            "extensions": self.extensions(),
        }
        info.update(self.backend.info())
        return info


def load_model(model_id: ModelId, *, cuda: bool = False, dtype: str | None = None,
               engine_options: dict[str, Any] | None = None, **loader_kwargs: Any) -> LoadedModel:
    spec = plugin_manager.backend_for_name(model_id.backend)
    return load_with(spec.factory, model_id, cuda=cuda, dtype=dtype, engine_options=engine_options,
                     tokenizer_loader=spec.tokenizer, **loader_kwargs)


def load_with(factory: Callable[..., Backend], model_id: ModelId, *, cuda: bool = False,
              dtype: str | None = None, engine_options: dict[str, Any] | None = None,
              tokenizer_loader: Callable[..., Any] | None = None, **loader_kwargs: Any) -> LoadedModel:
    """Call a backend's factory as the server does, check the contract and start its engine;
    ``tokenizer_loader``: the function its plugin gave ``register(..., tokenizer=)``."""
    try:
        backend = factory(model_id.model, cuda=cuda, dtype=dtype, **loader_kwargs)
    except LMQLError:
        raise
    except Exception as error:  # the loader's own complaint, told in one line with what was asked
        args = format_kwargs(loader_kwargs.items())
        raise ModelLoadError(
            f"could not load '{model_id.served_name}' with backend '{model_id.backend}'"
            f"{f' ({args})' if args else ''}: {type(error).__name__}: {_one_line(str(error))}"
        ) from error
    problems = contract_problems(backend)
    if problems:
        raise ModelLoadError(f"the backend '{model_id.backend}' ({type(backend).__name__}) does not set "
                             f"what every backend must: {'; '.join(problems)}")
    kwargs = dict(loader_kwargs, cuda=cuda, dtype=dtype)
    return LoadedModel(model_id, backend, Engine(backend, **(engine_options or {})), kwargs, tokenizer_loader)


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ModelHost:
    """The models one server (or one in-process transport) serves.

    Static by default: only the models it was started with. With ``load_on_demand`` a request
    for another model loads it with the defaults (never with loader arguments from clients).
    """

    models: dict[str, LoadedModel] = field(default_factory=dict)
    load_on_demand: bool = False
    default_backend: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, model: LoadedModel) -> None:
        self.models[model.model_id.served_name] = model

    def get(self, name: Any) -> LoadedModel:
        if not isinstance(name, str) or not name:
            raise RequestError("'model' must name the served model")
        name = name.removeprefix("local:")
        with self._lock:
            if name in self.models:
                return self.models[name]
            if not self.load_on_demand:
                served = ", ".join(f"'{n}'" for n in self.models) or "nothing"
                raise RequestError(
                    f"this server serves {served}, not '{shown(name)}': ask for a model it serves, or "
                    "start it with --load-on-demand to load other models on request"
                )
            model = load_model(parse_model_id(name, self.default_backend))
            self.add(model)
            return model

    def close(self) -> None:
        for model in self.models.values():
            model.engine.stop()
            model.backend.close()
