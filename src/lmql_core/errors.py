"""Exceptions with messages meant for the person at the keyboard."""

from __future__ import annotations


class LMQLError(Exception):
    """Base class of every error lmql-core raises on purpose."""


class BackendNotInstalled(LMQLError):
    def __init__(self, backend: str, distribution: str | None, install: str | None = None) -> None:
        """``install``: the command that installs ``distribution`` (``plugins.install_hint``)."""
        hint = f"install it with: {install}" if install else "see `lmql backends` for the installed ones"
        super().__init__(f"The backend '{backend}' is not installed; {hint}")
        self.backend = backend
        self.distribution = distribution


class ModelLoadError(LMQLError):
    """A backend failed to load a model; the message names the model, backend and arguments."""


class TokenizerNotFound(LMQLError):
    pass


class TokenizerMismatch(LMQLError):
    """The client's tokenizer is not the one the model is served with."""


class RequestError(LMQLError):
    """A request that the server or engine rejects; the message goes back to the client."""


def shown(value: object, limit: int = 60) -> str:
    """``value`` as text for an error message, cut to ``limit`` characters: a client's 100 KB
    model name or stream id is not echoed back whole."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ServerError(LMQLError):
    """An error reported by the server for one stream."""


class ConnectionLost(LMQLError):
    pass
