"""The load driver's LMTP targets (``lmtp_load.py``): one websocket to a server, or lmql-core's
in-process transport (``--local``); and one stream's request, timed token by token."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamTimes:
    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


class SocketTarget:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint if "://" in endpoint else f"ws://{endpoint}"
        self.queues: dict[int, asyncio.Queue[Any]] = {}

    async def __aenter__(self) -> SocketTarget:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.endpoint + "/", max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            command, _, body = msg.data.partition(" ")
            now = time.perf_counter()
            for entry in json.loads(body):
                queue = self.queues.get(entry.get("stream_id"))
                if queue is not None:
                    queue.put_nowait((now, entry))

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.queues[payload["stream_id"]] = queue
        await self.ws.send_str(f"{command} {json.dumps(payload)}")
        return queue

    async def info(self, model: str) -> dict[str, Any]:
        queue = await self.send("MODEL_INFO", {"stream_id": 0, "model": model})
        info = (await queue.get())[1].get("model_info")
        return info if isinstance(info, dict) else {}  # LMQL 0.7.3 may answer a text while loading


class LocalTarget:
    """The same requests through lmql-core's in-process transport (``local:``, no socket)."""

    def __init__(self, model: str, loader_kwargs: dict[str, Any]) -> None:
        from lmql_core.lmtp.local import InProcessClient
        from lmql_core.loading.identifiers import parse_model_id

        self.client = InProcessClient.for_model(parse_model_id("local:" + model), **loader_kwargs)

    async def __aenter__(self) -> LocalTarget:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        from lmql_core.lmtp.client.loop import client_loop

        queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def pump() -> None:  # runs on the client loop, like every lmql.model() call
            try:
                async for entry in self.client.request(command, payload):
                    loop.call_soon_threadsafe(queue.put_nowait, (time.perf_counter(), entry))
            except Exception as e:
                loop.call_soon_threadsafe(queue.put_nowait, (time.perf_counter(), {"error": str(e)}))

        asyncio.run_coroutine_threadsafe(pump(), client_loop())
        return queue

    async def info(self, model: str) -> dict[str, Any]:
        queue = await self.send("MODEL_INFO", {"model": model})
        return (await queue.get())[1]["msg"].get("model_info", {})


async def run_stream(target: Any, stream_id: int, request: dict[str, Any], delay: float) -> StreamTimes:
    await asyncio.sleep(delay)
    times = StreamTimes(sent=time.perf_counter())
    command = "SCORE" if "scored" in request else "GENERATE"
    expected = len(request["scored"]) if command == "SCORE" else request["max_tokens"]
    queue = await target.send(command, dict(request, stream_id=stream_id))
    while True:
        arrived, entry = await queue.get()
        if "error" in entry:
            raise RuntimeError(entry["error"])
        times.arrivals.append(arrived)
        if entry.get("finish_reason") is not None or len(times.arrivals) >= expected:
            return times
