"""One replica: a ``ModelHost`` with the model loaded, answering one request per Ray call.

An LMTP request (GENERATE, SCORE, MODEL_INFO, TOKENIZER) runs on a ``Session`` of its own and
its frames stream back until the stream ends; an OpenAI request runs through
``openai_compat.service.OpenAIService``, the same protocol logic the single server uses. Ray
Serve counts each call as one ongoing request, so its autoscaler and our router see streams.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from lmql_core.plugin.serving import (
    ModelHost,
    OpenAIError,
    OpenAIService,
    Session,
    Traffic,
    load_model,
    parse_model_id,
    render_metrics,
    wire,
)
from lmql_ray.lmtp_bridge import stream_ended

Frame = tuple[str, Any]  # (LMTP command, payload)


class ModelReplica:
    """The body of the Ray Serve deployment (``deploy.py`` wraps it with ``serve.deployment``)."""

    def __init__(self, model: str, backend: str | None, cuda: bool, dtype: str | None,
                 loader_kwargs: dict[str, Any], engine_options: dict[str, Any],
                 limits: wire.Limits) -> None:
        model_id = parse_model_id(model, backend)
        self.host = ModelHost(default_backend=backend)
        self.host.add(load_model(model_id, cuda=cuda, dtype=dtype, engine_options=engine_options,
                                 **loader_kwargs))
        self.limits = limits
        self.openai = OpenAIService(self.host, limits)
        self.traffic = Traffic()
        self.replica_id = _own_replica_id()
        self.streams_served = 0
        self.ongoing = 0

    async def lmtp(self, command: str, body: dict[str, Any],
                   routing_key: list[int] | None = None) -> AsyncIterator[list[Frame]]:
        """The frames answering one LMTP request, a batch per engine step, until its stream
        ends. ``routing_key`` is the router's (``router.py``). Cancelling the call (the client
        sent CANCEL or went away) stops the stream in the engine."""
        frames: asyncio.Queue[Frame] = asyncio.Queue()
        session = Session(self.host, lambda command, payload: frames.put_nowait((command, payload)),
                          self.limits)
        stream_id = body.get("stream_id") if isinstance(body, dict) else None
        self._begin("lmtp")
        try:
            await session.handle(command, body)
            while True:
                batch = [await frames.get()]
                while not frames.empty():
                    batch.append(frames.get_nowait())
                yield batch
                if any(stream_ended(c, p, stream_id) for c, p in batch):
                    return
        finally:
            session.close()
            self._end("lmtp")

    async def openai_call(self, route: str, body: dict[str, Any],
                          routing_key: list[int] | None = None) -> AsyncIterator[tuple[str, Any]]:
        """One OpenAI request: ``("replica", id)``, then ``("json", (status, answer))``, or
        ``("event", chunk)`` per stream chunk and ``("done", None)``; an error after the first
        chunk is an event too."""
        self._begin("openai")
        try:
            yield "replica", self.replica_id
            async for item in self._openai_items(route, body):
                yield item
        finally:
            self._end("openai")

    async def _openai_items(self, route: str, body: dict[str, Any]) -> AsyncIterator[tuple[str, Any]]:
        try:
            if route == "tokenize":
                yield "json", (200, await self.openai.tokenize(body))
                return
            if route == "detokenize":
                yield "json", (200, await self.openai.detokenize(body))
                return
            completion = await self.openai.completion(body, chat=route == "chat")
        except OpenAIError as error:
            yield "json", (error.status, error.body())
            return
        try:
            if not completion.request.stream:
                yield "json", (200, await completion.result())
                return
            try:
                async for chunk in completion.chunks():
                    yield "event", chunk
            except OpenAIError as error:
                yield "event", error.body()
            yield "done", None
        except OpenAIError as error:
            yield "json", (error.status, error.body())
        finally:
            completion.close()

    def models(self) -> dict[str, Any]:
        return self.openai.models()

    def health(self, pin_replica: str | None = None) -> dict[str, Any]:
        """This replica's state; the ingress gathers every replica's (``pin_replica``: the
        router sends the call to that replica)."""
        models = {}
        for name, loaded in self.host.models.items():
            cache = loaded.backend.info().get("kv_cache") or {}
            models[name] = {"active_sequences": loaded.engine.active_sequences(),
                            "waiting": loaded.engine.queue_depth(),
                            "reused_prefix_tokens": cache.get("reused_prefix_tokens"),
                            "tokens_prefilled": loaded.engine.stats.tokens_prefilled}
        return {"status": "ok", "replica": self.replica_id, "pid": os.getpid(), "node": socket.gethostname(),
                "streams_served": self.streams_served, "ongoing": self.ongoing, "models": models}

    def metrics(self, pin_replica: str | None = None) -> str:
        return render_metrics(self.host, self.traffic.clients["lmtp"], self.traffic).decode()

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve asks this periodically; our router reads it (``RunningReplica.routing_stats``)."""
        return {"ongoing": self.ongoing, "streams_served": self.streams_served}

    def _begin(self, transport: str) -> None:
        self.ongoing += 1
        self.streams_served += 1
        self.traffic.requests[transport] += 1
        self.traffic.clients[transport] += 1

    def _end(self, transport: str) -> None:
        self.ongoing -= 1
        self.traffic.clients[transport] -= 1

    def __del__(self) -> None:  # Ray Serve calls it when the replica shuts down
        host = getattr(self, "host", None)  # absent when loading failed
        if host is not None:
            host.close()


def _own_replica_id() -> str:
    from ray import serve

    return str(serve.get_replica_context().replica_id.unique_id)
