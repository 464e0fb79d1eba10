"""``lmql.http``: ``await fetch(url)`` for tool-using queries, as LMQL's documentation uses it."""

from __future__ import annotations

from typing import Any


async def fetch(url: str, path: str | None = None) -> Any:
    """The body of a GET on ``url`` as text; with ``path`` ("a.b.0"), the JSON body followed
    along it (a number indexes a list)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        if path is None:
            return await response.text()
        value = await response.json(content_type=None)
        for key in path.split("."):
            value = value[int(key)] if isinstance(value, list) else value[key]
        return value
