"""Model identifiers (``[local:][<backend prefix>:]<model>``) and loader arguments."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lmql_core import plugins
from lmql_core.errors import LMQLError

LOCAL_PREFIX = "local:"


@dataclass(frozen=True)
class ModelId:
    """A parsed model identifier.

    ``served_name`` is what client and server must agree on: the identifier without ``local:``.
    """

    model: str
    backend: str
    local: bool = False
    prefix: str = ""

    @property
    def served_name(self) -> str:
        return self.prefix + self.model

    def __str__(self) -> str:
        return (LOCAL_PREFIX if self.local else "") + self.served_name


def parse_model_id(identifier: str, backend: str | None = None) -> ModelId:
    """Split an identifier into transport, backend and model name.

    A backend prefix in the identifier wins; otherwise a backend that claims the exact name
    (``random``), then ``backend`` (the server's ``--backend``), then the default backend.
    """
    if not identifier or not identifier.strip():
        raise LMQLError("Empty model identifier")
    local = identifier.startswith(LOCAL_PREFIX)
    rest = identifier[len(LOCAL_PREFIX) :] if local else identifier
    for prefix, name in plugins.prefixes().items():
        if rest.startswith(prefix):
            return ModelId(rest[len(prefix) :], name, local, prefix)
    if backend is None:
        claimed = [s.name for s in plugins.registry().backends.values() if rest in s.models]
        backend = claimed[0] if claimed else plugins.DEFAULT_BACKEND
    return ModelId(rest, backend, local)



def parse_value(text: str) -> Any:
    """``"True"``/``"False"``/``"None"``, ints, floats and JSON objects or lists become Python
    values (``--max_memory '{"0": "20GiB"}'``); the rest stays text."""
    special = {"true": True, "false": False, "none": None}
    if text.lower() in special:
        return special[text.lower()]
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


def parse_loader_args(args: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--trust_remote_code", "True", "--n_ctx=4096", "--flag"]`` into keyword arguments.

    A ``--key`` followed by another ``--key`` (or nothing) is a flag and means ``True``.
    Dashes in keys become underscores, so ``--n-ctx`` and ``--n_ctx`` are the same.
    """
    result: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) == 2:
            raise LMQLError(f"Expected a --KEY VALUE pair for the model loader, got '{item}'")
        key, eq, value = item[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            result[key] = parse_value(value)
        elif i + 1 < len(items) and not items[i + 1].startswith("--"):
            result[key] = parse_value(items[i + 1])
            i += 1
        else:
            result[key] = True
        i += 1
    return result


def format_kwargs(kwargs: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs)
