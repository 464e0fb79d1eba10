"""OpenAI's endpoints on the models a ``ModelHost`` serves, with no web framework in sight.

Each method takes a parsed JSON body and returns OpenAI's JSON answer, or (completions) a
``Completion`` (``completion.py``) that is awaited whole or iterated as stream chunks; a bad
request raises ``OpenAIError`` with its HTTP status. A completion runs as LMTP requests on a
``Session`` of its own: the session checks them (token ids, sampling options, context, text)
exactly as it checks LMTP's, and its ``close()`` stops the engine's work when the client goes away.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lmql_core.errors import RequestError
from lmql_core.lmtp import wire
from lmql_core.lmtp.server.outbox import Outbox
from lmql_core.lmtp.server.session import Session, ignore_sends
from lmql_core.loading.model_host import ModelHost
from lmql_core.openai_compat import requests
from lmql_core.openai_compat.completion import Completion
from lmql_core.openai_compat.pacing import StreamPacer
from lmql_core.openai_compat.prompts import chat_ids, encode, served_model, tokenizer_of
from lmql_core.openai_compat.requests import bad_request


class OpenAIService:
    def __init__(self, host: ModelHost, limits: wire.Limits, pacer: StreamPacer | None = None) -> None:
        """``pacer``: how the streams on the loop space their events (default: ``limits``')."""
        self.host = host
        self.limits = limits
        self.pacer = pacer or StreamPacer(limits.openai_events_per_s)
        self._outboxes: dict[asyncio.AbstractEventLoop, Outbox] = {}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "lmql",
             "max_model_len": model.backend.max_context}
            for name, model in self.host.models.items()]}

    async def completion(self, body: dict[str, Any], chat: bool) -> Completion:
        """A started completion (its streams are in the engine's queue)."""
        k = self.limits.max_top_logprobs
        request = requests.chat_request(body, k) if chat else requests.completion_request(body, k)
        loop = asyncio.get_running_loop()
        outbox = self._outboxes.get(loop) or self._outboxes.setdefault(loop, Outbox(loop))
        completion = Completion(self.host, self.limits, request, outbox, self.pacer)
        try:
            await completion.begin()
        except BaseException:  # a refused request: streams it started stop, and it is freed now
            completion.close()
            raise
        return completion

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's ``/tokenize``: ``prompt`` (``add_special_tokens``: the BOS) or chat ``messages``."""
        session = Session(self.host, ignore_sends, self.limits)
        model = await served_model(session, requests.model_name(body))
        if "messages" in body:
            ids = await chat_ids(session, model, requests.messages(body["messages"]))
        else:
            bos = body.get("add_special_tokens", True) is not False
            ids = encode(session, model, body.get("prompt"), "prompt", bos)
        return {"count": len(ids), "max_model_len": model.backend.max_context, "tokens": ids}

    async def detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's ``/detokenize``: ``tokens`` back to text."""
        session = Session(self.host, ignore_sends, self.limits)
        model = await served_model(session, requests.model_name(body))
        try:
            ids = wire.token_list(body.get("tokens"), "tokens", model.backend.vocab_size)
        except RequestError as e:
            raise bad_request(str(e), "tokens") from None
        return {"prompt": tokenizer_of(model).decode(ids)}
