"""The load driver's requests through OpenAI's HTTP API (``lmtp_load.py --openai``): each stream
is one streamed ``POST /v1/completions`` (a SCORE: an ``echo`` request generating nothing), its
tokens counted as the server-sent events bring them. The model's description (vocabulary, EOS)
comes from LMTP's MODEL_INFO on the same port."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

NOT_LAST = {"finish_reason": None}


class OpenAITarget:
    def __init__(self, endpoint: str, api_key: str | None = None) -> None:
        host = endpoint.split("://", 1)[-1].rstrip("/").removesuffix("/v1")
        self.base_url = f"http://{host}/v1"
        self.lmtp_endpoint = host
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> OpenAITarget:
        import aiohttp

        self.session = aiohttp.ClientSession(headers=self.headers, connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self.tasks:
            task.cancel()
        await self.session.close()

    async def info(self, model: str) -> dict[str, Any]:
        from lmtp_load import SocketTarget

        async with SocketTarget(self.lmtp_endpoint) as lmtp:
            return await lmtp.info(model)

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(self._request(command, payload, queue))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return queue

    async def _request(self, command: str, payload: dict[str, Any], queue: asyncio.Queue[Any]) -> None:
        try:
            if command == "SCORE":
                await self._score(payload, queue)
            else:
                await self._generate(payload, queue)
        except Exception as e:  # the driver raises it for the stream
            queue.put_nowait((time.perf_counter(), {"error": f"{type(e).__name__}: {e}"}))

    async def _generate(self, payload: dict[str, Any], queue: asyncio.Queue[Any]) -> None:
        body = {"model": payload["model"], "prompt": payload["prompt"], "max_tokens": payload["max_tokens"],
                "temperature": payload.get("temperature", 0.0), "stream": True,
                "logprobs": payload.get("top_logprobs") or 0, "logit_bias": payload.get("logit_bias")}
        async with self.session.post(self.base_url + "/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {await response.text()}")
            rest = b""
            async for data in response.content.iter_any():  # whatever has arrived: one event or more
                now = time.perf_counter()
                *events, rest = (rest + data).split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: {"):
                        self._tokens(json.loads(event[6:])["choices"], now, queue)

    @staticmethod
    def _tokens(choices: list[dict[str, Any]], now: float, queue: asyncio.Queue[Any]) -> None:
        """An event's tokens (several when the server coalesced them), each an entry of the stream."""
        if not choices:  # the usage
            return
        choice = choices[0]
        tokens = len(choice["logprobs"]["tokens"]) if choice.get("logprobs") else 1
        for _ in range(tokens - 1):
            queue.put_nowait((now, NOT_LAST))
        queue.put_nowait((now, {"finish_reason": choice.get("finish_reason")}))

    async def _score(self, payload: dict[str, Any], queue: asyncio.Queue[Any]) -> None:
        body = {"model": payload["model"], "prompt": payload["prompt"] + payload["scored"], "max_tokens": 0,
                "echo": True, "logprobs": 0}
        async with self.session.post(self.base_url + "/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {await response.text()}")
            await response.read()
        now = time.perf_counter()
        for i in range(len(payload["scored"])):
            queue.put_nowait((now, {"finish_reason": "stop" if i == len(payload["scored"]) - 1 else None}))
