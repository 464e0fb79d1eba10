"""The hooks a plugin implements to add backends, tokenizers and transports.

A plugin is a module with ``@hookimpl`` functions; each receives a ``register`` callable.
Built-in parts of the core are registered through these same hooks.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("lmql")
hookimpl = pluggy.HookimplMarker("lmql")


@hookspec
def register_backends(register: Any) -> None:
    """Register model backends.

    ``register(name, factory, prefixes=(), models=(), description="", options=None,
    tokenizer=None, extra_options=None)``: ``factory(model, *, cuda=False, dtype=None,
    **loader_kwargs)`` returns a ``lmql_core.base.backend.Backend``. ``prefixes`` are identifier
    prefixes that select this backend (``"llama.cpp:"``); ``models`` are exact model names it
    claims (``"random"``); ``options`` maps the backend's loader options to
    ``lmql_core.base.options.Option(type, default, help)`` (or to a line of help: any value), which
    ``lmql serve-model --help`` lists and the core checks before loading; other keys are an error
    unless ``extra_options`` says where they go (text, e.g. ``"from_pretrained"``) or is a
    function returning the other names the factory takes. ``tokenizer(model, tokenizer=None)`` returns the
    ``lmql_core.loading.tokenizer.Tokenizer`` of this backend's ``model`` (``tokenizer``: the name a user
    passed with ``tokenizer=``, if any), or None to leave it to the tokenizer loaders; clients ask
    it first for this backend's models.
    """


@hookspec
def register_tokenizers(register: Any) -> None:
    """Register tokenizer loaders.

    ``register(name, loader)``: ``loader(model, tokenizer=None, **options)`` returns a
    ``lmql_core.loading.tokenizer.Tokenizer`` or ``None`` when it does not know that model.
    """


@hookspec
def register_transports(register: Any) -> None:
    """Register client transports.

    ``register(prefix, factory)``: ``factory(model_id, **options)`` returns a
    ``lmql_core.lmtp.client.LMTPClient`` for ``model_id`` (a ``ModelId``); ``prefix`` is the
    identifier prefix that selects it (``"local:"``), or ``""`` for the default.
    """


@hookspec
def register_commands(register: Any) -> None:
    """Register subcommands of the ``lmql`` command line.

    ``register(command)``: ``command`` is a ``click.Command`` (its name is the subcommand's);
    one whose name the core already uses is ignored. The plugin imports what it needs (click,
    its own libraries) inside this hook, so a plugin that is not used costs nothing.
    """
