"""``lmql.demo`` and ``lmql.http``, the modules LMQL's tools page imports (a real HTTP server on
127.0.0.1 for ``fetch``)."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web

import lmql.demo
import lmql.http


def test_gsm8k_samples_show_the_calculator_form() -> None:
    samples = lmql.demo.gsm8k_samples()
    calculations = re.findall(r"<< (.+?) = (\S+) >>(\S+)", samples)
    assert len(calculations) >= 3 and samples.count("So the answer is") >= 2
    for expr, value, repeated in calculations:
        assert eval(expr) == int(value) == int(repeated)  # the demonstrations' arithmetic is right


async def _serve_and_fetch(path: str | None, route: str) -> object:
    async def pages(request: web.Request) -> web.Response:
        return web.json_response({"query": {"pages": {"7": {"extract": "Norse text"}}, "list": [1, {"x": 2}]}})

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/api", pages)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await lmql.http.fetch(f"http://127.0.0.1:{port}{route}", path)
    finally:
        await runner.cleanup()


def test_fetch_follows_a_json_path_through_dicts_and_lists() -> None:
    assert asyncio.run(_serve_and_fetch("query.pages", "/api")) == {"7": {"extract": "Norse text"}}
    assert asyncio.run(_serve_and_fetch("query.list.1.x", "/api")) == 2
    assert '"Norse text"' in str(asyncio.run(_serve_and_fetch(None, "/api")))


def test_fetch_raises_on_an_http_error() -> None:
    with pytest.raises(Exception, match="404"):
        asyncio.run(_serve_and_fetch(None, "/missing"))
