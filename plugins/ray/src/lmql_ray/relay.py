"""What the ingress does with each request: relay it to a replica through the model deployment's
handle (routed by ``router.py``) and turn the replica's answer into the HTTP response.

It lives apart from ``ingress.py`` because Ray pickles the ingress class by value: state it
reads from its own module (the routers of this process) would be a copy there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from lmql_core.plugin.serving import OpenAIError, parse_json, wire
from lmql_ray import calls
from lmql_ray.lmtp_bridge import LMTPBridge
from lmql_ray.metrics_text import merge_metrics
from lmql_ray.policy import routing_key
from lmql_ray.router import ROUTERS

log = logging.getLogger(__name__)
REPLICA_CALL_TIMEOUT_S = 10.0
REPLICA_HEADER = "x-lmql-replica"  # on OpenAI answers: the replica that served the request
PROMETHEUS = "text/plain; version=0.0.4"


class Relay:
    def __init__(self, replicas: Any, deployment_name: str, limits: wire.Limits) -> None:
        self.replicas = replicas
        self.deployment_name = deployment_name
        self.limits = limits

    async def lmtp(self, ws: WebSocket) -> None:
        await ws.accept()
        bridge = LMTPBridge(self.replicas, ws.send_text, self.limits)
        try:
            while True:
                await bridge.handle_text(await ws.receive_text())
        except WebSocketDisconnect:
            pass
        finally:
            await bridge.close()

    async def models(self) -> Any:
        return await calls.call(self.replicas, "models")

    async def openai(self, route: str, request: Request) -> Response:
        """``route``: completion, chat, tokenize, detokenize (``ModelReplica.openai_call``)."""
        try:
            body = await request.body()
            if len(body) > self.limits.max_frame_bytes:
                raise OpenAIError(413, f"the request body is larger than this server accepts "
                                  f"({self.limits.max_frame_bytes} bytes)", code="request_too_large")
            parsed = parse_json(body)
        except OpenAIError as error:
            return JSONResponse(error.body(), status_code=error.status)
        call = calls.call(self.replicas, "openai_call", route, parsed, stream=True,
                          routing_key=routing_key(parsed))
        try:
            _, replica = await call.__anext__()
            kind, value = await call.__anext__()
        except Exception as error:  # the replica failed before answering
            call.cancel()
            return JSONResponse(_replica_failed(error).body(), status_code=503)
        headers = {REPLICA_HEADER: str(replica)}
        if kind == "json":
            status, answer = value
            return JSONResponse(answer, status_code=status, headers=headers)
        return StreamingResponse(_events(value, call), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})

    async def health(self) -> Response:
        replicas = await self._from_each("health")
        ok = bool(replicas) and all(r.get("status") == "ok" for r in replicas.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "replicas": replicas},
                            status_code=200 if ok else 503)

    async def metrics(self) -> Response:
        answers = await self._from_each("metrics")
        texts = {name: text for name, text in answers.items() if isinstance(text, str)}
        return PlainTextResponse(merge_metrics(texts), media_type=PROMETHEUS)

    async def replica_health(self, name: str) -> Response:
        answer = await self._from_replica(name, "health")
        return JSONResponse(answer, status_code=200 if answer.get("status") == "ok" else 503)

    async def replica_metrics(self, name: str) -> Response:
        answer = await self._from_replica(name, "metrics")
        if not isinstance(answer, str):
            return JSONResponse(answer, status_code=503)
        return PlainTextResponse(answer, media_type=PROMETHEUS)

    async def _from_each(self, method: str) -> dict[str, Any]:
        names = await self.replica_names()
        answers = await asyncio.gather(*(self._from_replica(name, method) for name in names))
        return dict(zip(names, answers, strict=True))

    async def _from_replica(self, name: str, method: str) -> Any:
        try:
            return await asyncio.wait_for(calls.call(self.replicas, method, pin_replica=name),
                                          REPLICA_CALL_TIMEOUT_S)
        except Exception as error:  # dead, restarting, or not a replica of ours
            problem = f"{type(error).__name__}: {error}"[:300]
            return {"status": "unreachable", "replica": name, "error": problem}

    async def replica_names(self) -> list[str]:
        """The live replicas, as the router of this process knows them."""
        if self.deployment_name not in ROUTERS:  # no call has gone through the handle: one makes it
            await calls.call(self.replicas, "models")
        return ROUTERS[self.deployment_name].replica_names()


def _replica_failed(error: Exception) -> OpenAIError:
    return OpenAIError(503, f"the replica serving this request failed ({type(error).__name__}); "
                       "send it again", kind="service_unavailable")


async def _events(first: Any, call: Any) -> AsyncIterator[bytes]:
    """Server-sent events from the replica's items; a replica that fails ends the stream with
    an error event."""
    try:
        yield _event(first)
        async for kind, value in call:
            if kind == "done":
                break
            yield _event(value)
    except asyncio.CancelledError:
        call.cancel()
        raise
    except Exception as error:
        yield _event(_replica_failed(error).body())
    yield b"data: [DONE]\n\n"


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
