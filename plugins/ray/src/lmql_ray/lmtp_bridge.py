"""One LMTP websocket connection at the ingress: each request becomes a Ray call routed to a
replica (``ModelReplica.lmtp``), whose frames are relayed back in the order they arrive.

A stream whose replica fails (its process died, it could not be reached) ends with an error
entry; the connection and its other streams go on. CANCEL cancels the call, which stops the
stream in the replica's engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lmql_core.plugin import RequestError
from lmql_core.plugin.serving import shown, wire
from lmql_ray import calls
from lmql_ray.policy import routing_key

log = logging.getLogger(__name__)
STREAMING = ("GENERATE", "SCORE")


def stream_ended(command: str, payload: Any, stream_id: Any) -> bool:
    """Whether a frame answering ``stream_id``'s request is its last one."""
    if command == "MSG":
        return True
    return any(isinstance(e, dict) and e.get("stream_id") in (stream_id, None)
               and (e.get("error") is not None or e.get("finish_reason") is not None)
               for e in payload or ())


def error_frame(stream_id: Any, message: str) -> str:
    return wire.encode_frame("TOKEN", [{"stream_id": stream_id, "error": message}])


class LMTPBridge:
    def __init__(self, replicas: Any, send: Callable[[str], Awaitable[None]], limits: wire.Limits) -> None:
        """``replicas``: the model deployment's handle; ``send``: writes one frame to the client."""
        self.replicas = replicas
        self.limits = limits
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(send))
        self._streams: dict[Any, asyncio.Task[None]] = {}  # GENERATE/SCORE streams running
        self._calls: set[asyncio.Task[None]] = set()

    async def handle_text(self, text: str) -> None:
        try:
            command, payload = wire.parse_frame(text)
            body = wire.require_object(payload, command)
            stream_id = wire.stream_id_of(body)
        except RequestError as error:
            self.send(error_frame(None, str(error)))
            return
        if command == wire.CANCEL:
            self._cancel(stream_id)
            return
        if command in STREAMING:
            problem = self._cannot_start(stream_id)
            if problem:
                self.send(error_frame(stream_id, problem))
                return
        call = asyncio.create_task(self._relay(command, body, stream_id))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        if command in STREAMING:
            self._streams[stream_id] = call
            call.add_done_callback(lambda _: self._forget(stream_id, call))

    def _cannot_start(self, stream_id: Any) -> str | None:
        if stream_id in self._streams:
            return f"stream {shown(stream_id)} is already running on this connection"
        if len(self._streams) >= self.limits.max_streams_per_connection:
            return (f"this connection has {len(self._streams)} streams running or queued, the most "
                    "the server allows (--max-streams); send more when some have finished")
        return None

    async def _relay(self, command: str, body: dict[str, Any], stream_id: Any) -> None:
        key = routing_key(body)
        response = calls.call(self.replicas, "lmtp", command, body, stream=True, routing_key=key)
        try:
            async for batch in response:
                for frame_command, payload in batch:
                    self.send(wire.encode_frame(frame_command, payload))
                    if stream_ended(frame_command, payload, stream_id):  # its id is free again now
                        self._forget(stream_id, asyncio.current_task())
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as error:  # the replica died or is unreachable: this stream alone ends
            log.warning("stream %r failed on its replica: %s", stream_id, error)
            self.send(error_frame(stream_id, f"the replica serving this stream failed "
                                             f"({type(error).__name__}); send the request again"))

    def _cancel(self, stream_id: Any) -> None:
        call = self._streams.pop(stream_id, None)
        if call is not None:
            call.cancel()

    def _forget(self, stream_id: Any, call: asyncio.Task[None] | None) -> None:
        if self._streams.get(stream_id) is call:
            del self._streams[stream_id]

    def send(self, frame: str) -> None:
        self._outgoing.put_nowait(frame)

    async def _write(self, send: Callable[[str], Awaitable[None]]) -> None:
        while (frame := await self._outgoing.get()) is not None:
            await send(frame)

    async def close(self) -> None:
        """The client went away: cancel its calls (their streams stop), stop writing."""
        for call in [*self._calls]:
            call.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
