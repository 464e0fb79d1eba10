"""Loader options: what a backend declares (type, default, help) and checking what users pass.

A backend registers its options with ``register(..., options={"n": Option(int, 4, "help")})``.
Values from ``lmql serve-model NAME --n 8`` and ``lmql.model("local:NAME", n=8)`` are checked
and converted here, before the model loads: a value of the wrong type or a key the backend does
not know is one ``LMQLError`` naming the key and the known ones. A backend whose loader passes
other keys on to a library (hf: ``from_pretrained``) says so with ``extra_options=``.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmql_core.errors import LMQLError

# Passed to every factory by the core itself, never declared by a backend.
CORE_KEYWORDS = ("cuda", "dtype")
_WORDS = {"true": True, "false": False, "none": None}


@dataclass(frozen=True)
class Option:
    """One loader option: ``type`` is a type or a union (``int | None``, ``bool | str``; the
    first that fits wins for text), ``default`` what the backend uses without it."""

    type: Any = object
    default: Any = None
    help: str = ""

    def types(self) -> tuple[Any, ...]:
        if isinstance(self.type, tuple):
            return self.type
        if isinstance(self.type, types.UnionType) or typing.get_origin(self.type) is typing.Union:
            return typing.get_args(self.type)
        return (self.type,)

    def type_name(self) -> str:
        names: dict[Any, str] = {type(None): "None", object: "any"}
        return " | ".join(names.get(t) or str(getattr(t, "__name__", t)) for t in self.types())

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type; text (from the command line) is parsed. Raises
        ValueError when no type fits."""
        for kind in self.types():
            fits, converted = _as_type(kind, value)
            if fits:
                return converted
        raise ValueError(value)

    def describe(self) -> str:
        """One line for ``serve-model --help``."""
        default = "" if self.default is None else f" [default: {self.default}]"
        kind = "" if self.type is object else f" ({self.type_name()})"
        return f"{self.help}{kind}{default}"


# Options of the engine every model runs on (``lmql_core.engine.Engine``), given like a backend's
# own: split off before the factory is called (a backend that declares one gets it too).
ENGINE_OPTIONS = {
    "max_batch": Option(int, None, "most sequences stepped together (default: the backend's own limit, "
                                   "64 where it has none)"),
    "token_budget": Option(int, 8192, "prompt tokens prefilled per step; longer prompts take several"),
}


def _as_type(kind: Any, value: Any) -> tuple[bool, Any]:
    """(True, value as ``kind``) or (False, None)."""
    text = value.strip() if isinstance(value, str) else None
    if kind is object:
        return True, value
    if kind is type(None) or kind is bool:
        word = _WORDS.get(text.lower(), value) if text is not None else value
        return (word is None, None) if kind is type(None) else (isinstance(word, bool), word)
    if kind in (int, float):
        return _as_number(kind, value, text)
    if kind in (dict, list) and text is not None and text[:1] in "{[":
        try:
            value = json.loads(text)
        except ValueError:
            return False, None
    return isinstance(value, kind), value


def _as_number(kind: type, value: Any, text: str | None) -> tuple[bool, Any]:
    """An int, a float (from an int too), or text that reads as one; never a bool."""
    if isinstance(value, bool):
        return False, None
    if isinstance(value, int) or (kind is float and isinstance(value, float)):
        return True, kind(value)
    try:
        return (True, kind(text)) if text is not None else (False, None)
    except ValueError:
        return False, None


Extras = str | Callable[[], Iterable[str]] | None


@dataclass(frozen=True)
class LoaderOptions:
    """A backend's declared options, and what it does with others: ``extra`` None rejects them,
    text says where they go (``"AutoModelForCausalLM.from_pretrained"``: any key is taken), a
    function returns the names it takes (read only when an undeclared key comes)."""

    backend: str
    declared: Mapping[str, Option] = field(default_factory=dict)
    extra: Extras = None

    @classmethod
    def of(cls, backend: str, options: Mapping[str, Option | str] | None, extra: Extras) -> LoaderOptions:
        """From ``register``'s arguments; an option given as help text alone takes any value."""
        declared = {name: option if isinstance(option, Option) else Option(help=str(option))
                    for name, option in (options or {}).items()}
        return cls(backend, declared, extra)

    def check(self, kwargs: Mapping[str, Any], from_text: bool = False) -> dict[str, Any]:
        """``kwargs`` with declared options converted to their types (``from_text``: untyped and
        undeclared ones too, as ``parse_value`` reads them); an LMQLError for a bad value or an
        unknown key."""
        checked = {}
        for key, value in kwargs.items():
            option = self.declared.get(key) or ENGINE_OPTIONS.get(key)
            if option is not None and option.type is not object:
                checked[key] = self._convert(key, option, value)
            elif option is not None or key in CORE_KEYWORDS or self._takes(key):
                checked[key] = parse_value(value) if from_text and isinstance(value, str) else value
            else:
                raise LMQLError(f"the {self.backend} backend has no option --{key}; {self.known()}")
        return checked

    def check_and_split(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``kwargs`` checked (``check``), as (the factory's, the engine's)."""
        return self.split(self.check(kwargs))

    def split(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Checked ``kwargs`` as (the factory's, the engine's)."""
        engine = {key: value for key, value in kwargs.items() if key in ENGINE_OPTIONS}
        loader = {key: value for key, value in kwargs.items() if key not in engine or key in self.declared}
        return loader, engine

    def _convert(self, key: str, option: Option, value: Any) -> Any:
        try:
            return option.convert(value)
        except ValueError:
            raise LMQLError(f"--{key} of the {self.backend} backend must be {option.type_name()}, got "
                            f"{value!r}; {self.known()}") from None

    def _takes(self, key: str) -> bool:
        if self.extra is None:
            return False
        return isinstance(self.extra, str) or key in set(self.extra())

    def known(self) -> str:
        """``its options: --a (int), --b (bool)``, the engine's, and what it does with others."""
        listed = f"its options: {_named(self.declared)}" if self.declared else "it has no options of its own"
        engine = f"the engine's: {_named(ENGINE_OPTIONS)}"
        if isinstance(self.extra, str):
            return f"{listed}; {engine}; other keys go to {self.extra}"
        if self.extra is not None:
            others = sorted(set(self.extra()) - set(self.declared))
            return f"{listed}; {engine}; it also takes --{', --'.join(others)}"
        return f"{listed}; {engine}"


def _named(options: Mapping[str, Option]) -> str:
    return ", ".join(f"--{name} ({option.type_name()})" for name, option in options.items())


def parse_value(text: str) -> Any:
    """``"True"``/``"False"``/``"None"``, ints, floats and JSON objects or lists become Python
    values (``--max_memory '{"0": "20GiB"}'``); the rest stays text."""
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def command_line_pairs(args: Sequence[str]) -> dict[str, str | bool]:
    """``["--trust_remote_code", "True", "--n-ctx=4096", "--flag"]`` as keys and their text.

    A ``--key`` followed by another ``--key`` (or nothing) is a flag and means ``True``.
    Dashes in keys become underscores, so ``--n-ctx`` and ``--n_ctx`` are the same.
    """
    result: dict[str, str | bool] = {}
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) == 2:
            raise LMQLError(f"Expected a --KEY VALUE pair for the model loader, got '{item}'")
        key, eq, value = item[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            result[key] = value
        elif i + 1 < len(items) and not items[i + 1].startswith("--"):
            result[key] = items[i + 1]
            i += 1
        else:
            result[key] = True
        i += 1
    return result


def parse_loader_args(args: Sequence[str]) -> dict[str, Any]:
    """``--KEY VALUE`` pairs with each value read by ``parse_value`` (for backends that declare
    nothing about them, and for a query's inputs)."""
    return {key: parse_value(value) if isinstance(value, str) else value
            for key, value in command_line_pairs(args).items()}


def format_kwargs(kwargs: Iterable[tuple[str, Any]]) -> str:
    """``k=v, ...`` with each value's repr, as in a call."""
    return ", ".join(f"{key}={value!r}" for key, value in kwargs)


def call_text(callee: str, *args: Any, **kwargs: Any) -> str:
    """A call as Python text, for a backend's ``info()``: ``Llama(model_path='x.gguf', n_ctx=64)``."""
    return f"{callee}({', '.join([*map(repr, args), *filter(None, [format_kwargs(kwargs.items())])])})"
