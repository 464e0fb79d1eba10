"""``lmql.algorithms``: queries over lists of items (LMQL 0.7's ``map`` and ``reduce``).

``map(q, items)`` calls ``q`` on every item, ``chunksize`` at a time (all at once by default),
and returns the results in order; ``q`` is a query function, a plain (async) function, or a
query string for ``lmql.F`` (with ``where=`` its constraints). A query's result is unpacked as
LMQL does it: a list of one to its element, an ``LMQLResult`` with a ``RESULT`` variable to
that value, stripped. With ``caching(True)``, results are kept per query code and arguments in
``.lmql-algorithms-cache`` (pickled) and not asked again.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import sys
import warnings
from typing import Any

from lmql_core.query.api import F, QueryFunction
from lmql_core.query.result import LMQLResult

__all__ = ["apply", "caching", "get_stats", "map", "reduce", "set_cache"]

CACHE_FILE = ".lmql-algorithms-cache"
_cache: dict[Any, Any] | None = None
_cache_file: str | None = None
stats = {"total": 0, "cached": 0}


async def map(q: Any, items: list[Any], chunksize: int | None = None, progress: bool = False,  # noqa: A001
              parameter: str | None = None, **kwargs: Any) -> list[Any]:
    """``q`` applied to every item (``parameter`` names the input it goes to, else positional)."""
    size = chunksize or max(len(items), 1)
    results: list[Any] = []
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        results += await asyncio.gather(*(_apply_to(q, item, parameter, kwargs) for item in chunk))
        if progress:
            print(f"lmql.algorithms.map: {len(results)}/{len(items)}", file=sys.stdout, flush=True)
    return results


async def reduce(f: Any, items: list[Any], initial: Any = None) -> Any:
    """``f(f(f(initial, a), b), c)``; without ``initial``, the first item starts."""
    if initial is None:
        accumulated, rest = items[0], items[1:]
    else:
        accumulated, rest = initial, items
    for item in rest:
        accumulated = await apply(f, accumulated, item)
    return accumulated


async def _apply_to(q: Any, item: Any, parameter: str | None, kwargs: dict[str, Any]) -> Any:
    if parameter is not None:
        return await apply(q, **{parameter: item}, **kwargs)
    return await apply(q, item, **kwargs)


async def apply(q: Any, *args: Any, **kwargs: Any) -> Any:
    """One call of ``q`` (see the module's docstring), through the cache when it is on."""
    if isinstance(q, str):
        q = F(q, kwargs.pop("where", None), is_async=True, **kwargs)
        kwargs = {}
    if not isinstance(q, QueryFunction):
        result = q(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result
    stats["total"] += 1
    key = _key(q, args, kwargs)
    if _cache is not None and key in _cache:
        stats["cached"] += 1
        return _cache[key]
    result = q(*args, **kwargs)
    result = _unpack(await result if inspect.isawaitable(result) else result)
    if _cache is not None:
        _cache[key] = result
        _persist()
    return result


def _unpack(result: Any) -> Any:
    if isinstance(result, list) and len(result) == 1:
        result = result[0]
    if isinstance(result, LMQLResult) and "RESULT" in result.variables:
        value = result.variables["RESULT"]
        return value.strip() if isinstance(value, str) else value
    return result


def _key(q: QueryFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    parts = [tuple(sorted(a.items())) if isinstance(a, dict) else tuple(a) if isinstance(a, list) else a
             for a in args]
    key = (q.lmql_code, *parts, *sorted(kwargs.items()))
    try:
        hash(key)
    except TypeError:
        warnings.warn(f"cannot hash the query arguments {args}; caching by their text", stacklevel=3)
        return q.lmql_code + repr(args) + repr(kwargs)
    return key


def caching(state: bool) -> None:
    """Keep results in ``.lmql-algorithms-cache`` (True) or not at all (False)."""
    global _cache, _cache_file
    if state:
        set_cache(CACHE_FILE)
    else:
        _cache, _cache_file = None, None


def set_cache(path: str) -> None:
    global _cache, _cache_file
    _cache_file, _cache = path, {}
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                _cache = pickle.load(f)
        except Exception:
            warnings.warn(f"failed to load the cache file {path}; starting an empty one", stacklevel=2)


def _persist() -> None:
    if _cache is not None and _cache_file is not None:
        with open(_cache_file, "wb") as f:
            pickle.dump(_cache, f)


def get_stats() -> str:
    return f"lmql.algorithms Stats: Total queries: {stats['total']}, Cached queries: {stats['cached']}"
