"""One client's conversation with the engines: LMTP commands in, TOKEN and MSG frames out.

The websocket server wraps a session around each connection; the in-process transport uses a
session directly, without a socket. Both therefore accept and answer exactly the same things.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lmql_core.engine.sequence import Kind, SamplingParams, Sequence, TokenEvent
from lmql_core.errors import LMQLError, RequestError
from lmql_core.lmtp import protocol
from lmql_core.serving import LoadedModel, ModelHost

log = logging.getLogger(__name__)

Send = Callable[[str, Any], None]  # called on the session's event loop


class Session:
    def __init__(self, host: ModelHost, send: Send, limits: protocol.Limits | None = None) -> None:
        self.host = host
        self.limits = limits or protocol.Limits()
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._active: dict[Any, tuple[Sequence, LoadedModel]] = {}
        self.closed = False

    async def handle_text(self, text: str) -> None:
        try:
            command, payload = protocol.parse_frame(text)
        except RequestError as e:
            self._error(None, str(e))
            return
        await self.handle(command, payload)

    async def handle(self, command: str, payload: Any) -> None:
        stream_id = None
        try:
            handler = self._handlers().get(command)
            if handler is None:
                raise RequestError(f"unknown command '{command}' (expected GENERATE, SCORE or MODEL_INFO)")
            body = protocol.require_object(payload, command)
            stream_id = protocol.stream_id_of(body)
            await handler(stream_id, body)
        except LMQLError as e:
            self._error(stream_id, str(e))
        except Exception as e:  # never let one request take the connection down
            log.exception("request failed")
            self._error(stream_id, f"internal error: {type(e).__name__}: {e}")

    def _handlers(self) -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
        return {"GENERATE": self._generate, "SCORE": self._score, "MODEL_INFO": self._model_info}

    async def _model(self, body: dict[str, Any]) -> LoadedModel:
        name = body.get("model")
        loaded = self.host.models.get(name) if isinstance(name, str) else None
        if loaded is None:  # not served yet: an error, or a load (off the event loop)
            loaded = await asyncio.to_thread(self.host.get, name)
        return loaded

    async def _generate(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self._model(body)
        vocab = model.backend.vocab_size
        prompt = protocol.token_list(body.get("prompt"), "prompt", vocab)
        params = protocol.sampling_params(body, vocab, self.limits)
        self._check_context(model, len(prompt))
        self._start(Sequence(stream_id, prompt, params, self._deliver), model)

    async def _score(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self._model(body)
        vocab = model.backend.vocab_size
        prompt = protocol.token_list(body.get("prompt"), "prompt", vocab)
        scored = protocol.token_list(body.get("scored"), "scored", vocab)
        self._check_context(model, len(prompt) + len(scored))
        seq = Sequence(stream_id, prompt, SamplingParams(max_tokens=0), self._deliver, Kind.SCORE, scored)
        self._start(seq, model)

    async def _model_info(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self._model(body)
        self._send("MSG", [{"stream_id": stream_id, "model": model.model_id.served_name,
                            "model_info": model.info()}])

    def _check_context(self, model: LoadedModel, length: int) -> None:
        limit = model.backend.max_context
        if limit is not None and length >= limit:
            raise RequestError(f"the prompt has {length} tokens; this model's context holds {limit}")

    def _start(self, seq: Sequence, model: LoadedModel) -> None:
        if seq.stream_id in self._active:
            raise RequestError(f"stream {seq.stream_id} is already running on this connection")
        if len(self._active) >= self.limits.max_streams_per_connection:
            raise RequestError(f"at most {self.limits.max_streams_per_connection} streams per connection")
        self._active[seq.stream_id] = (seq, model)
        model.engine.submit(seq)

    def _deliver(self, events: list[TokenEvent]) -> None:
        """Called on the engine thread with one step's events for this session."""
        if not self.closed:
            self._loop.call_soon_threadsafe(self._send_tokens, events)

    def _send_tokens(self, events: list[TokenEvent]) -> None:
        for e in events:
            if e.finish_reason is not None or e.error is not None:
                self._active.pop(e.stream_id, None)
        if not self.closed:
            self._send("TOKEN", [protocol.token_entry(e) for e in events])

    def _error(self, stream_id: Any, message: str) -> None:
        self._send("TOKEN", [{"stream_id": stream_id, "error": message}])

    def close(self) -> None:
        """The client went away: stop its sequences so the engine frees their memory."""
        self.closed = True
        by_engine: dict[int, tuple[Any, list[Sequence]]] = {}
        for seq, model in self._active.values():
            by_engine.setdefault(id(model.engine), (model.engine, []))[1].append(seq)
        for engine, seqs in by_engine.values():
            engine.cancel(seqs)
        self._active.clear()
