"""The ``openai:`` transport: LMTP requests answered by an OpenAI-compatible completions server.

``lmql.model("openai:NAME", endpoint="http://host:port/v1")`` gives an ``LLM`` whose GENERATE
requests are streamed ``/v1/completions`` calls with the prompt as token ids, and whose SCOREs
are ``echo`` + ``logprobs`` calls that generate nothing. Token ids come back through vLLM's
``return_tokens_as_token_ids`` (our server and vLLM support it). Runs on the client loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

from lmql_core.errors import ConnectionLost, LMQLError
from lmql_core.lmtp import wire
from lmql_core.lmtp.client.loop import client_loop, on_shutdown
from lmql_core.lmtp.client.transport import LMTPClient

log = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "http://localhost:8080/v1"
TOKEN_ID = "token_id:"
# LMTP's GENERATE fields an OpenAI completions request takes under the same name
PASSED_ON = ("temperature", "top_p", "top_k", "seed", "repetition_penalty")


class OpenAIClient(LMTPClient):
    cancels = True  # abandoning a request closes its HTTP response: the server stops it
    _shared: ClassVar[dict[tuple[str, str | None], OpenAIClient]] = {}

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http: Any = None
        self._requests: dict[Any, asyncio.Task[None]] = {}
        self._models: dict[str, dict[str, Any]] | None = None
        self._told: set[str] = set()

    @classmethod
    def shared(cls, endpoint: str | None = None, api_key: str | None = None, **_: Any) -> OpenAIClient:
        """One client per process, endpoint and key."""
        base_url = base_url_of(endpoint)
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("LMQL_AUTH_TOKEN")
        key = (base_url, api_key)
        if key not in cls._shared:
            cls._shared[key] = asyncio.run_coroutine_threadsafe(_construct(cls, base_url, api_key),
                                                                client_loop()).result()
        return cls._shared[key]

    async def _send(self, command: str, payload: dict[str, Any]) -> None:
        stream_id = payload.get("stream_id")
        if command == wire.CANCEL:
            task = self._requests.pop(stream_id, None)
            if task is not None:
                task.cancel()
            return
        handlers: dict[str, Callable[[Any, dict[str, Any]], Awaitable[None]]] = {
            "GENERATE": self._generate, "SCORE": self._score, "MODEL_INFO": self._model_info}
        handler = handlers.get(command)
        if handler is None:
            raise LMQLError(f"{command} is not available over OpenAI's API")
        self._requests[stream_id] = asyncio.create_task(self._run(handler, stream_id, payload))

    async def _run(self, handler: Callable[[Any, dict[str, Any]], Awaitable[None]], stream_id: Any,
                   payload: dict[str, Any]) -> None:
        try:
            await handler(stream_id, payload)
        except asyncio.CancelledError:
            raise
        except (OSError, ConnectionLost) as error:  # aiohttp's connection errors are OSErrors
            lost = f"cannot reach {self.base_url}: {error}"
            self._dispatch("TOKEN", [{"stream_id": stream_id, "error": lost, "lost": True}])
        except Exception as error:  # the stream's error, as an LMTP server would send it
            self._dispatch("TOKEN", [{"stream_id": stream_id, "error": str(error)}])
        finally:
            self._requests.pop(stream_id, None)

    # --- the requests ------------------------------------------------------------------------

    async def _model_info(self, stream_id: Any, payload: dict[str, Any]) -> None:
        name = payload.get("model")
        models = await self._served_models()
        if name not in models:  # a server that loads on demand may have it by now
            self._models = None
            models = await self._served_models()
        if name not in models:
            served = ", ".join(map(repr, models)) or "nothing"
            raise LMQLError(f"the server at {self.base_url} serves {served}, not {name!r}")
        info = {"model": name, "max_context": models[name].get("max_model_len"),
                "extensions": {"tokenizer": None, "text": False, "cancel": True}}
        self._dispatch("MSG", [{"stream_id": stream_id, "model": name, "model_info": info}])

    async def _generate(self, stream_id: Any, payload: dict[str, Any]) -> None:
        prompt = payload["prompt"]
        body: dict[str, Any] = {name: payload[name] for name in PASSED_ON if payload.get(name) is not None}
        body.update(model=payload["model"], prompt=prompt, stream=True, return_tokens_as_token_ids=True,
                    logprobs=max(1, int(payload.get("top_logprobs") or 0)),
                    max_tokens=payload.get("max_tokens") or await self._room(payload["model"], len(prompt)))
        if payload.get("logit_bias"):
            body["logit_bias"] = payload["logit_bias"]
        held: dict[str, Any] | None = None  # the last token, sent once we know whether it ends the stream
        async for chunk in self._events("/completions", body):
            for choice in chunk.get("choices", []):
                for entry in self._entries(stream_id, choice.get("logprobs")):
                    if held is not None:
                        self._dispatch("TOKEN", [held])
                    held = entry
                if choice.get("finish_reason") is not None:
                    if held is None:
                        raise LMQLError("the server ended the stream without a token")
                    held["finish_reason"] = "length" if choice["finish_reason"] == "length" else "stop"
                    self._dispatch("TOKEN", [held])
                    return
        raise ConnectionLost("the server's stream ended without a finish_reason")

    async def _score(self, stream_id: Any, payload: dict[str, Any]) -> None:
        prompt, scored = payload["prompt"], payload["scored"]
        body = {"model": payload["model"], "prompt": prompt + scored, "max_tokens": 0, "echo": True,
                "logprobs": 1, "return_tokens_as_token_ids": True}
        answer = await self._post("/completions", body)
        logprobs = answer["choices"][0]["logprobs"]
        entries = list(self._entries(stream_id, logprobs, scored=True))[len(prompt):]
        if [e["token"] for e in entries] != scored:
            raise LMQLError("the server's echo does not give back the scored tokens")
        entries[-1]["finish_reason"] = "stop"
        self._dispatch("TOKEN", entries)

    def _entries(self, stream_id: Any, logprobs: dict[str, Any] | None,
                 scored: bool = False) -> Iterator[dict[str, Any]]:
        if not logprobs:
            raise LMQLError("the server sent no logprobs (LMQL needs them)")
        tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
        for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True):
            entry = {"stream_id": stream_id, "token": self._token_id(token),
                     "logprob": wire.LOWEST_LOGPROB if logprob is None else logprob, "finish_reason": None}
            if not scored:
                entry["top_logprobs"] = {str(self._token_id(t)): lp for t, lp in (top or {}).items()}
            yield entry

    def _token_id(self, token: str) -> int:
        if not token.startswith(TOKEN_ID):
            raise LMQLError(f"the server at {self.base_url} does not name tokens by id "
                            "(vLLM's return_tokens_as_token_ids), which LMQL needs")
        return int(token[len(TOKEN_ID):])

    async def _room(self, model: str, prompt_length: int) -> int:
        """Without max_tokens (LMTP: until EOS), as many as the context leaves."""
        context = (await self._served_models()).get(model, {}).get("max_model_len")
        return max(1, int(context) - prompt_length) if context else wire.Limits().max_tokens

    async def _served_models(self) -> dict[str, dict[str, Any]]:
        if self._models is None:
            answer = await self._get("/models")
            self._models = {m["id"]: m for m in answer.get("data", []) if isinstance(m, dict)}
        return self._models

    # --- HTTP -----------------------------------------------------------------------------

    async def _client(self) -> Any:
        if self._http is None:
            import aiohttp

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = aiohttp.ClientSession(headers=headers)
            on_shutdown(self.close)
        return self._http

    async def _get(self, path: str) -> dict[str, Any]:
        http = await self._client()
        async with http.get(self.base_url + path) as response:
            return await self._json(response)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        http = await self._client()
        async with http.post(self.base_url + path, json=body) as response:
            return await self._json(response)

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The server-sent events of a streamed request, until ``data: [DONE]``."""
        http = await self._client()
        async with http.post(self.base_url + path, json=body) as response:
            if response.status != 200:
                await self._json(response)
            async for line in response.content:
                text = line.decode().strip()
                if not text.startswith("data:"):
                    continue
                data = text[len("data:"):].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise LMQLError(_message(event))
                yield event

    async def _json(self, response: Any) -> dict[str, Any]:
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = {"error": {"message": (await response.text())[:200]}}
        if response.status != 200:
            raise LMQLError(f"the server at {self.base_url} answered {response.status}: {_message(answer)}")
        return dict(answer)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _message(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    return str(error.get("message") if isinstance(error, dict) else error or answer)


def base_url_of(endpoint: str | None) -> str:
    """``http://host:port/v1`` from what a user passes (a bare ``host:port`` gets ``http://`` and ``/v1``)."""
    if not endpoint:
        return DEFAULT_ENDPOINT
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint if endpoint.rstrip("/").endswith("/v1") else endpoint.rstrip("/") + "/v1"


async def _construct(cls: type[OpenAIClient], base_url: str, api_key: str | None) -> OpenAIClient:
    return cls(base_url, api_key)  # on the client loop, which its tasks belong to
