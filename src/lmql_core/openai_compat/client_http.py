"""HTTP for the ``openai:`` transport: JSON requests and server-sent event streams (aiohttp)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from lmql_core.errors import LMQLError
from lmql_core.lmtp.client.loop import on_shutdown
from lmql_core.openai_compat.client_features import HTTPStatusError


class OpenAIHTTP:
    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http: Any = None

    async def _client(self) -> Any:
        if self._http is None:
            import aiohttp

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = aiohttp.ClientSession(headers=headers)
            on_shutdown(self.close)
        return self._http

    async def get(self, path: str) -> dict[str, Any]:
        http = await self._client()
        async with http.get(self.base_url + path) as response:
            return await self._json(response)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        http = await self._client()
        async with http.post(self.base_url + path, json=body) as response:
            return await self._json(response)

    async def events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
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
                if isinstance(event, dict) and "error" in event:
                    raise LMQLError(f"the server at {self.base_url}: {message_of(event)}")
                yield event

    async def _json(self, response: Any) -> dict[str, Any]:
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = {"error": {"message": (await response.text())[:200]}}
        if response.status != 200:
            raise HTTPStatusError(response.status, f"the server at {self.base_url} answered "
                                                   f"{response.status}: {message_of(answer)}")
        return dict(answer)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def message_of(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    detail = answer.get("detail") if isinstance(answer, dict) else None  # FastAPI's (llama-cpp-python)
    return str(error or detail or answer)[:500]
