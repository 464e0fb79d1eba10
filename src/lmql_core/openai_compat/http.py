"""OpenAI's HTTP API on the LMTP server's aiohttp application (same port, same token, limits
and metrics): routes, bodies, errors as HTTP statuses, server-sent events, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lmql_core.lmtp.server.app import GUARD_KEY, HOST_KEY, LIMITS_KEY, TRAFFIC_KEY, authorized
from lmql_core.openai_compat.completion import DONE, Completion
from lmql_core.openai_compat.requests import OpenAIError, parse_json
from lmql_core.openai_compat.service import OpenAIService

SERVICE_KEY = web.AppKey("openai_service", OpenAIService)
DISCONNECT_POLL_S = 0.2  # how often a request in flight looks whether its client is still there
TRANSPORT = "openai"
Endpoint = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    """Serve OpenAI's API beside LMTP on ``app`` (made by ``lmtp.server.app.make_app``)."""
    app[SERVICE_KEY] = OpenAIService(app[HOST_KEY], app[LIMITS_KEY])
    app[DEPARTURES_KEY] = Departures()
    app.router.add_get("/v1/models", _endpoint(_models, reads_body=False))
    app.router.add_post("/v1/completions", _endpoint(_completions))
    app.router.add_post("/v1/chat/completions", _endpoint(_chat_completions))
    app.router.add_post("/tokenize", _endpoint(_tokenize))
    app.router.add_post("/detokenize", _endpoint(_detokenize))
    app.router.add_route("*", "/v1/{anything:.*}", _endpoint(_no_such_route, reads_body=False))


ROUTES = "GET /v1/models, POST /v1/completions, POST /v1/chat/completions, POST /tokenize, POST /detokenize"


def error_response(error: OpenAIError) -> web.Response:
    return web.json_response(error.body(), status=error.status)


def _endpoint(handler: Endpoint, reads_body: bool = True) -> Handler:
    """``handler`` behind what every route does first: the token, shutdown, the body's size and
    JSON; an ``OpenAIError`` becomes its status with OpenAI's error body."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        traffic = request.app[TRAFFIC_KEY]
        traffic.requests[TRANSPORT] += 1
        traffic.clients[TRANSPORT] += 1
        try:
            if not authorized(request):
                raise OpenAIError(401, "this server needs an API key: the server's --auth-token, sent as "
                                  "'Authorization: Bearer KEY'", code="invalid_api_key")
            if request.app[GUARD_KEY].closing:
                raise OpenAIError(503, "the server is shutting down", kind="service_unavailable")
            body = parse_json(await _read_body(request)) if reads_body else {}
            return await handler(request, body)
        except OpenAIError as error:
            return error_response(error)
        finally:
            traffic.clients[TRANSPORT] -= 1

    return endpoint


async def _read_body(request: web.Request) -> bytes:
    """The body, refused (413) beyond the LMTP frame limit (--max-frame-bytes) before it is all read."""
    limit = request.app[LIMITS_KEY].max_frame_bytes
    too_large = OpenAIError(413, f"the request body is larger than this server accepts ({limit} bytes; "
                            "--max-frame-bytes)", code="request_too_large")
    if (request.content_length or 0) > limit:
        raise too_large
    chunks, size = [], 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _service(request: web.Request) -> OpenAIService:
    return request.app[SERVICE_KEY]


async def _no_such_route(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    raise OpenAIError(404, f"no route {request.method} {request.path} here; this server answers {ROUTES}",
                      code="unknown_url")


async def _models(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response(_service(request).models())


async def _tokenize(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response(await _service(request).tokenize(body))


async def _detokenize(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response(await _service(request).detokenize(body))


async def _completions(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await _answer(request, await _service(request).completion(body, chat=False))


async def _chat_completions(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await _answer(request, await _service(request).completion(body, chat=True))


async def _answer(request: web.Request, completion: Completion) -> web.StreamResponse:
    """The completion whole, or as server-sent events; a client that goes away stops its streams
    in the engine (``Completion.close``)."""
    departures = request.app[DEPARTURES_KEY]
    departures.watch(completion, request)
    try:
        # the requests that arrived with this one reach the engine before its answer is set up:
        # in a burst, the last one's streams then start without waiting for every earlier answer
        await asyncio.sleep(0)
        if completion.request.stream:
            return await _stream(request, completion)
        return web.json_response(await completion.result())
    finally:
        departures.forget(completion)
        completion.close()


class Departures:
    """The completions in flight, closed when their clients go away: one task looks at all of
    them every DISCONNECT_POLL_S (not a task per request: at 64 requests at once, their set-up
    is part of every request's time to its first token)."""

    def __init__(self) -> None:
        self._watched: dict[Completion, web.Request] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, completion: Completion, request: web.Request) -> None:
        self._watched[completion] = request
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._look())

    def forget(self, completion: Completion) -> None:
        self._watched.pop(completion, None)

    async def _look(self) -> None:
        while self._watched:
            await asyncio.sleep(DISCONNECT_POLL_S)
            for completion, request in list(self._watched.items()):
                if request.transport is None or request.transport.is_closing():
                    del self._watched[completion]
                    completion.close()


DEPARTURES_KEY = web.AppKey("openai_departures", Departures)


class EventStream(web.StreamResponse):
    """Server-sent events whose headers go out with the first event, in one write: one system
    call fewer per request (aiohttp versions that can hold headers back, 3.14 here, read this
    flag; older ones send them at ``prepare``, as before)."""

    _send_headers_immediately = False


async def _stream(request: web.Request, completion: Completion) -> web.StreamResponse:
    response = EventStream(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        async for data in completion.sse():
            if data.endswith(DONE):  # the last piece ends the response in the same write
                await response.write_eof(data)
            else:
                await response.write(data)
        await response.write_eof()  # the client went away: no [DONE]
    except ConnectionError:  # the client went away while we wrote
        pass
    return response
