"""The one endpoint in front of the replicas (a FastAPI app, Ray Serve's ASGI ingress): LMTP on
the websocket at ``/``, OpenAI's API under ``/v1`` (and vLLM's ``/tokenize``, ``/detokenize``),
``/health`` and ``/metrics`` for all replicas together and ``/replicas/ID/...`` for one.

The ingress only relays (``relay.py``): every request is a call on the model deployment's
handle, which our router sends to a replica; the replica answers it with the single server's
own protocol logic (``lmtp.server.session``, ``openai_compat.service``).
"""

# No ``from __future__ import annotations`` here: Ray's ingress wrapper makes FastAPI read the
# endpoints' annotations outside this module, where names in strings do not resolve.
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from ray import serve

from lmql_core.plugin.serving import wire
from lmql_ray import relay

app = FastAPI()


@serve.ingress(app)
class Ingress:
    def __init__(self, replicas: Any, deployment_name: str, limits: wire.Limits) -> None:
        self.relay = relay.Relay(replicas, deployment_name, limits)

    @app.websocket("/")
    async def lmtp(self, ws: WebSocket) -> None:
        await self.relay.lmtp(ws)

    @app.get("/v1/models")
    async def models(self) -> Any:
        return await self.relay.models()

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.relay.openai("completion", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self.relay.openai("chat", request)

    @app.post("/tokenize")
    async def tokenize(self, request: Request) -> Response:
        return await self.relay.openai("tokenize", request)

    @app.post("/detokenize")
    async def detokenize(self, request: Request) -> Response:
        return await self.relay.openai("detokenize", request)

    @app.get("/health")
    async def health(self) -> Response:
        return await self.relay.health()

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return await self.relay.metrics()

    @app.get("/replicas/{name}/health")
    async def replica_health(self, name: str) -> Response:
        return await self.relay.replica_health(name)

    @app.get("/replicas/{name}/metrics")
    async def replica_metrics(self, name: str) -> Response:
        return await self.relay.replica_metrics(name)
