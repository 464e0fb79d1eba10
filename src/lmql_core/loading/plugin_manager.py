"""Plugin manager: finds built-in and third-party plugins and collects what they register."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from lmql_core.base import hookspecs
from lmql_core.base.options import Extras, LoaderOptions, Option
from lmql_core.errors import BackendNotInstalled

ENTRY_POINT_GROUP = "lmql"
# Built-in plugins go through the same hooks as third-party ones.
BUILTIN_PLUGINS = ("lmql_core.builtin",)
CORE_DISTRIBUTION = "lmql-core"

# Backends we know of but that live in their own distributions: named when one is missing.
KNOWN_BACKENDS = {"hf": "lmql-hf", "llama.cpp": "lmql-llamacpp"}
# Where those distributions sit in a checkout of lmql-core (until they are on the registry).
CHECKOUT_PATHS = {"lmql-hf": "./plugins/hf", "lmql-llamacpp": "./plugins/llamacpp"}
DEFAULT_BACKEND = "hf"


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Callable[..., Any]
    prefixes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""
    distribution: str = CORE_DISTRIBUTION
    # the backend's own loader options (`serve-model --help` lists them) and what it does with others
    options: LoaderOptions = field(default_factory=lambda: LoaderOptions(""))
    # ``tokenizer(model, tokenizer=None)``: the tokenizer of this backend's models, or None
    tokenizer: Callable[..., Any] | None = None


@dataclass
class Registry:
    backends: dict[str, BackendSpec] = field(default_factory=dict)
    tokenizers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    transports: dict[str, Callable[..., Any]] = field(default_factory=dict)
    commands: list[Any] = field(default_factory=list)  # click commands (``register_commands``)


@cache
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("lmql")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    allowed = os.environ.get("LMQL_LOAD_PLUGINS")
    if allowed is None:
        names = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    else:  # a comma-separated list of entry-point names; empty: built-ins only
        names = [n for n in (n.strip() for n in allowed.split(",")) if n]
    for name in names:
        _load_plugin(pm, name)
    return pm


def _load_plugin(pm: pluggy.PluginManager, name: str) -> None:
    """One installed plugin: one that fails to import is left out with a warning that names it,
    so that a broken (or stale) plugin does not take every command down with it."""
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    except Exception as error:  # noqa: BLE001 - a third party's import can raise anything
        warnings.warn(f"the lmql plugin '{name}' failed to load and is left out: "
                      f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)


def _distributions(pm: pluggy.PluginManager) -> dict[int, str]:
    return {id(plugin): dist.project_name for plugin, dist in pm.list_plugin_distinfo()}


@cache
def registry() -> Registry:
    """Everything all plugins registered, collected once per process."""
    pm = plugin_manager()
    dists = _distributions(pm)
    reg = Registry()
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        dist = dists.get(id(plugin), CORE_DISTRIBUTION)

        def add_backend(
            backend_name: str,
            factory: Callable[..., Any],
            prefixes: tuple[str, ...] | list[str] = (),
            models: tuple[str, ...] | list[str] = (),
            description: str = "",
            options: dict[str, Option | str] | None = None,
            tokenizer: Callable[..., Any] | None = None,
            extra_options: Extras = None,
            _plugin: str = name,
            _dist: str = dist,
        ) -> None:
            reg.backends[backend_name] = BackendSpec(
                backend_name, factory, tuple(prefixes), tuple(models), description, _plugin, _dist,
                LoaderOptions.of(backend_name, options, extra_options), tokenizer,
            )

        # pluggy calls a hook on every plugin but those it is told to leave out: this plugin's
        # hooks alone, so that what each registers is known to come from it
        left_out = [p for p in pm.get_plugins() if p is not plugin]
        hooks_of_this_plugin = functools.partial(pm.subset_hook_caller, remove_plugins=left_out)
        hooks_of_this_plugin("register_backends")(register=add_backend)
        hooks_of_this_plugin("register_tokenizers")(register=reg.tokenizers.__setitem__)
        hooks_of_this_plugin("register_transports")(register=reg.transports.__setitem__)
        hooks_of_this_plugin("register_commands")(register=reg.commands.append)
    return reg


def versions(*distributions: str) -> dict[str, str]:
    """The installed version of each of ``distributions`` (those not installed left out), for a
    backend's ``info()``: ``versions("torch", "lmql-hf", "lmql-core")``."""
    return dict(_installed_versions(distributions))


@cache  # read once: MODEL_INFO asks on every call, and reading package metadata takes ~17 ms
def _installed_versions(distributions: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    import importlib.metadata

    found = []
    for distribution in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append((distribution, importlib.metadata.version(distribution)))
    return tuple(found)


def install_hint(distribution: str) -> str:
    """How to install a plugin distribution: from the registry, or from a checkout of lmql-core."""
    path = CHECKOUT_PATHS.get(distribution)
    checkout = f" (from a checkout of lmql-core: pip install {path})" if path else ""
    return f"pip install {distribution}{checkout}"


def prefixes() -> dict[str, str]:
    """Identifier prefixes and the backends they select: those the installed backends register,
    and ``NAME:`` for each known backend that is not installed (using it says what to install)."""
    installed = registry().backends
    found = {f"{name}:": name for name in KNOWN_BACKENDS if name not in installed}
    for spec in installed.values():
        found.update({prefix: spec.name for prefix in spec.prefixes})
    return found


def backend_for_name(name: str) -> BackendSpec:
    spec = registry().backends.get(name)
    if spec is None:
        distribution = KNOWN_BACKENDS.get(name)
        raise BackendNotInstalled(name, distribution, install_hint(distribution) if distribution else None)
    return spec


def backend_takes(name: str, keyword: str) -> bool:
    """Whether the factory of backend ``name`` names ``keyword`` among its parameters (a
    ``**kwargs`` alone does not count: those usually go on to a library that would reject it)."""
    import inspect

    try:
        parameters = inspect.signature(backend_for_name(name).factory).parameters
    except (TypeError, ValueError):  # a factory whose signature cannot be read
        return False
    found = parameters.get(keyword)
    return found is not None and found.kind in (found.POSITIONAL_OR_KEYWORD, found.KEYWORD_ONLY)
