"""Calls on a deployment handle, each with a request id of its own.

Ray Serve gives a call made while serving a request (here: an LMTP connection, an HTTP request)
that request's internal id, and its router pairs each routing decision with the pending call of
that id: several calls in flight from one connection would share one id, and each call could be
given the replica chosen for another (or none: the stream would hang). Each call here runs in a
request context that differs only in that id.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from ray.serve import context as serve_context


def call(handle: Any, method: str, *args: Any, stream: bool = False, **kwargs: Any) -> Any:
    """``handle.<method>.remote(*args, **kwargs)`` (a streaming one with ``stream``)."""
    variable = serve_context._serve_request_context
    current = variable.get()
    token = variable.set(dataclasses.replace(current, _internal_request_id=uuid.uuid4().hex))
    try:
        target = handle.options(stream=True) if stream else handle
        return getattr(target, method).remote(*args, **kwargs)
    finally:
        variable.reset(token)
