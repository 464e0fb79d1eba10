"""``lmql.runtime.lmql_runtime`` (also ``lmql.lmql_runtime``, ``lmql.runtime_support``): the
runtime helpers LMQL 0.7.3's library code calls from Python (``call``, ``tag``, ``format``)."""

from __future__ import annotations

import inspect
from typing import Any

from lmql_core.lmtp.client.loop import run_async
from lmql_core.query import QueryFunction as LMQLQueryFunction
from lmql_core.query.chat import prompt_value, tag


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` from async code whatever it is: a query (run on lmql's client loop, sync or
    async), a coroutine function (awaited) or a plain function (called)."""
    if hasattr(fn, "__lmql_query_function__"):
        return await run_async(fn.run_in_query(*args, **kwargs))
    result = fn(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


def format(value: Any) -> str:  # noqa: A001 (LMQL's name)
    """``value`` as ``{value}`` writes it into a prompt: a chat list as role-tagged messages, and
    square brackets doubled (a value never opens a variable)."""
    shown = prompt_value(value)
    return shown if shown is not value else str(value).replace("[", "[[").replace("]", "]]")


__all__ = ["LMQLQueryFunction", "call", "format", "tag"]
