"""Tracing, as LMQL 0.7.3's ``lmql.traced`` / ``lmql.Tracer``: a record of the model calls made in a
context, from which an inference certificate is made (``certificate.py``).

A ``Tracer`` collects events (one per model request: ``lmtp.generate``, ``lmtp.score``; and a
query's results), metrics and child tracers. The active tracer lives in a ``ContextVar``: the
client loop runs a call in a copy of its caller's context, so a query started inside
``with lmql.traced(...)`` records into it, from any thread. A query, ``generate`` or ``score``
call opens a child tracer under the active one (or a root one when a certificate was asked for).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

REMOVED = "<removed>"
_redacted_keys = {"Authorization"}
_active: ContextVar[Tracer | None] = ContextVar("lmql_tracer", default=None)


def add_extra_redact_keys(keys: str | list[str]) -> None:
    """Dictionary keys whose values every tracer records as ``"<removed>"`` from now on (at any
    depth); ``Authorization`` always is."""
    _redacted_keys.update([keys] if isinstance(keys, str) else keys)


def _redact(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: REMOVED if k in _redacted_keys else _redact(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_redact(v) for v in data]
    return data


def _without_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_none(v) for v in data]
    return data


def _plain(data: Any) -> Any:
    """Dataclasses (an ``LMQLResult``, a list of them) as dicts."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if isinstance(data, list):
        return [_plain(d) for d in data]
    return data


class Event:
    """A recorded event that grows after it was recorded (a streamed request's tokens)."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    def update(self, data: dict[str, Any]) -> None:
        self.entry["data"] = {**self.entry["data"], **data}

    def add(self, key: str, data: Any) -> None:
        empty: Any = "" if isinstance(data, str) else []
        self.entry["data"][key] = self.entry["data"].get(key, empty) + data


class Tracer:
    """The events, metrics and child tracers of one traced context (a query, a ``generate``
    call, a ``with lmql.traced(name)`` block)."""

    def __init__(self, name: str, parent: Tracer | None = None) -> None:
        self.name = name
        self.parent = parent
        self.events: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.children: list[Tracer] = []
        self.active = True

    def event(self, name: str, data: Any, skip_none: bool = False) -> Event | None:
        """Record ``data`` (made JSON: what cannot be is not recorded, with a warning, as in LMQL)."""
        data = _plain(data)
        if skip_none:
            data = _without_none(data)
        try:
            data = json.loads(json.dumps(_redact(data)))
        except (TypeError, ValueError):
            warnings.warn(f"Tracer: cannot log or trace non-serializable data: {data!r}", RuntimeWarning,
                          stacklevel=2)
            return None
        self.events.append({"name": name, "data": data})
        return Event(self.events[-1])

    def add(self, metric_name: str, n: float = 1) -> None:
        """Add ``n`` to a metric (dots nest: ``"lmtp.requests"``), here and in every parent."""
        if self.parent is not None:
            self.parent.add(metric_name, n)
        *path, last = metric_name.split(".")
        level = self.metrics
        for part in path:
            level = level.setdefault(part, {})
        level[last] = level.get(last, 0) + n

    def add_child_tracer(self, tracer: Tracer) -> None:
        self.children.append(tracer)
        tracer.parent = self

    def __str__(self) -> str:
        children = ""
        if self.children:
            children = " children=[\n{}\n".format("\n".join(" - " + str(c) for c in self.children))
        return f"<lmql.Tracer '{self.name}' events={len(self.events)} metrics={len(self.metrics)}{children}]>"

    __repr__ = __str__


def active_tracer() -> Tracer | None:
    """The tracer recording in this context, or None."""
    return _active.get()


class ContextTracer:
    """Makes ``tracer`` the active one for a ``with`` block; it becomes a child of the tracer
    active when the block starts, if any."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._tokens: list[Token[Tracer | None]] = []

    def __enter__(self) -> Tracer:
        current = _active.get()
        if current is not None and self.tracer.parent is None and current is not self.tracer:
            current.add_child_tracer(self.tracer)
        self._tokens.append(_active.set(self.tracer))
        return self.tracer

    def __exit__(self, *exc: Any) -> None:
        _active.reset(self._tokens.pop())


def traced(name: str) -> ContextTracer:
    """``with lmql.traced("name") as tracer:``: every query and model call in the block is
    recorded in ``tracer`` (one child tracer each); ``lmql.certificate(tracer)`` shows them."""
    return ContextTracer(Tracer(name))


def trace(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@trace(name)``: each call of the function records into a child tracer ``name`` of the
    active tracer (nothing is recorded when none is active)."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with scope(name):
                    return await fn(*args, **kwargs)
            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with scope(name):
                return fn(*args, **kwargs)
        return run

    return decorator


@contextmanager
def scope(name: str, record: bool = False) -> Iterator[Tracer | None]:
    """A child tracer ``name`` of the active tracer, active inside the block; with no active
    tracer, a root tracer when ``record`` (a certificate was asked for), else none at all."""
    if _active.get() is None and not record:
        yield None
        return
    with ContextTracer(Tracer(name)) as tracer:
        yield tracer
