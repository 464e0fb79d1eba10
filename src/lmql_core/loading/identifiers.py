"""Model identifiers (``[local:][<backend prefix>:]<model>``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmql_core.errors import LMQLError
from lmql_core.loading import plugin_manager

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
    for prefix, name in plugin_manager.prefixes().items():
        if rest.startswith(prefix):
            return ModelId(rest[len(prefix) :], name, local, prefix)
    if backend is None:
        claimed = [s.name for s in plugin_manager.registry().backends.values() if rest in s.models]
        backend = claimed[0] if claimed else plugin_manager.DEFAULT_BACKEND
    return ModelId(rest, backend, local)

