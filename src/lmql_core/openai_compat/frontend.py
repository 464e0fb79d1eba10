"""An OpenAI front-end process (``serving/frontends.py`` starts them): OpenAI's HTTP API on the
connections the server's process hands over, its requests passed on over one LMTP connection.

It serves until its channel closes (the server stops, or has gone) or its LMTP connection ends;
then new requests are answered 503 and it exits once those in flight have ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from typing import Any

from aiohttp import web

from lmql_core.lmtp import wire
from lmql_core.lmtp.limits import Limits
from lmql_core.lmtp.server.app import GUARD_KEY, TRAFFIC_KEY, base_app
from lmql_core.lmtp.server.guard import SNIFF_BYTES, ConnectionGuard, GuardedProtocol
from lmql_core.lmtp.server.metrics import Traffic
from lmql_core.openai_compat import http as openai_http
from lmql_core.openai_compat.requests import OpenAIError
from lmql_core.openai_compat.upstream import RemoteHost, Upstream, remote_model

log = logging.getLogger("lmql_core.frontend")
READY = b"ready"  # what it says on its channel once it serves
TRAFFIC_EVERY_S = 0.5  # how often the server's metrics hear of this process's requests
ENDING_S = 5.0  # at the end, how long requests in flight get to finish


async def serve(channel: socket.socket, upstream_url: str, models: list[str], limits: Limits,
                auth_token: str, secret: str) -> None:
    loop = asyncio.get_running_loop()
    upstream = Upstream(upstream_url, auth_token, secret)
    await upstream.open()
    host = RemoteHost(upstream, loop)
    for name in models:
        host.add(await remote_model(upstream, name))
    app = frontend_app(host, limits, auth_token)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=ENDING_S)
    await runner.setup()
    server, guard = runner.server, app[GUARD_KEY]
    assert server is not None
    closed = loop.create_future()
    loop.add_reader(channel, _take_connection, channel, server, guard, closed)
    reporter = loop.create_task(_report_traffic(upstream, app[TRAFFIC_KEY]))
    channel.send(READY)
    try:
        lost = loop.create_task(upstream.lost.wait())
        await asyncio.wait([closed, lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(channel)
        guard.closing = True
        reporter.cancel()
        await _in_flight_ended(app[TRAFFIC_KEY])
        await runner.cleanup()
        await upstream.close()


def _take_connection(channel: socket.socket, server: Any, guard: ConnectionGuard,
                     closed: asyncio.Future[None]) -> None:
    """One connection from the server's process: its socket, and the bytes it read of it."""
    try:
        head, fds, _, _ = socket.recv_fds(channel, SNIFF_BYTES + 1024, 1)
    except BlockingIOError:
        return
    except OSError:
        head, fds = b"", []
    if not fds:
        if not head and not closed.done():  # the server's process closed the channel
            closed.set_result(None)
        return
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    loop.create_task(loop.connect_accepted_socket(lambda: GuardedProtocol(server(), guard, head), sock))


async def _report_traffic(upstream: Upstream, traffic: Traffic) -> None:
    told = (0, 0)
    while True:
        await asyncio.sleep(TRAFFIC_EVERY_S)
        now = (traffic.requests["openai"], traffic.clients["openai"])
        if now != told:
            upstream.send(wire.TRAFFIC, {"requests": now[0] - told[0], "clients": now[1]})
            told = now


async def _in_flight_ended(traffic: Traffic) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ENDING_S):
            while traffic.clients["openai"] > 0:
                await asyncio.sleep(0.05)


def frontend_app(host: RemoteHost, limits: Limits, auth_token: str) -> web.Application:
    """OpenAI's routes; anything else is answered with where to ask instead."""
    app = base_app(host, limits, auth_token)
    openai_http.add_routes(app)
    app.router.add_route("*", "/{anything:.*}", _elsewhere)
    return app


async def _elsewhere(request: web.Request) -> web.StreamResponse:
    error = OpenAIError(421, f"this connection serves OpenAI's API (/v1/...); ask for {request.path} on a "
                        "new connection", code="misdirected_request")
    return openai_http.error_response(error)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An OpenAI front-end process of `lmql serve-model "
                                     "--openai-processes N` (started by the server, not by hand).")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--limits", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle: it stops us
    logging.basicConfig(format="[front-end %(process)d] %(levelname)s %(message)s")
    channel = socket.socket(fileno=args.channel_fd)
    channel.setblocking(False)
    limits = Limits(**json.loads(args.limits))
    try:
        asyncio.run(serve(channel, args.upstream, json.loads(args.models), limits,
                          os.environ.get("LMQL_AUTH_TOKEN", ""), os.environ.get("LMQL_FRONTEND_SECRET", "")))
    except Exception as error:  # told by the server too (it waits for READY)
        log.error("the OpenAI front-end stopped: %s: %s", type(error).__name__, error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
