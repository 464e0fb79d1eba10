"""The engine's process as an OpenAI front-end process sees it: one LMTP connection carrying the
streams of all the front-end's HTTP requests (``Upstream``), and the served models rebuilt from
what that connection tells (``RemoteModel``).

A front-end runs the same ``OpenAIService``, ``Completion`` and ``Session`` code as the engine's
process does; only the engine differs: ``Upstream.submit`` sends the sequence's checked LMTP
body (``Sequence.request``) upstream under an id of the connection's, and the TOKEN entries that
come back are turned into the engine's ``TokenEvent``s for the sequence's sink. So requests are
checked here (a bad one is answered 400 without a round trip) and again by the engine's session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import aiohttp

from lmql_core.engine.endings import deliver_all
from lmql_core.engine.engine import Engine
from lmql_core.engine.sequence import Finish, Kind, Sequence, Status, TokenEvent
from lmql_core.errors import LMQLError, RequestError
from lmql_core.lmtp import wire
from lmql_core.loading.identifiers import ModelId
from lmql_core.loading.model_host import LoadedModel, ModelHost
from lmql_core.loading.tokenizer import Tokenizer, from_spec

log = logging.getLogger(__name__)
ASK_TIMEOUT_S = 120.0  # a model loaded on demand may take this long
LOST = "the connection to the engine's process was lost"
_FINISHES = {None: None, wire.STOP: Finish.EOS, wire.LENGTH: Finish.LENGTH}


class Upstream:
    """One front-end's LMTP connection to the engine's process; the ``engine`` of its models."""

    def __init__(self, url: str, auth_token: str, secret: str) -> None:
        self.url = url
        self._headers = {wire.FRONTEND_HEADER: secret}
        if auth_token:
            self._headers["Authorization"] = f"Bearer {auth_token}"
        self._ids = itertools.count(1)
        self._streams: dict[int, Sequence] = {}  # by the connection's stream id
        self._ids_of: dict[int, int] = {}  # Sequence.seq_id -> the connection's stream id
        self._asks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._frames: deque[str] = deque()
        self._ready = asyncio.Event()
        self.lost = asyncio.Event()  # set when the connection has ended
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, headers=self._headers, max_msg_size=0,
                                               compress=0, autoping=True)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._write())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self._end_all()

    # --- the engine's side of ``Session`` --------------------------------------------------

    def submit(self, seq: Sequence, from_client: bool = True) -> None:
        if seq.request is None:  # (the session makes every sequence from a request)
            raise RequestError("a front-end passes on only requests it was sent")
        if self.lost.is_set():
            raise LMQLError(LOST)
        sid = next(self._ids)
        self._streams[sid] = seq
        self._ids_of[seq.seq_id] = sid
        body = {k: v for k, v in seq.request.items() if k not in ("text", "scored_text")}
        # each request (a session here, its sink) a client of its own in the engine's fair share
        body.update(stream_id=sid, prompt=seq.prompt, client=id(seq.sink))
        if seq.kind is Kind.SCORE:
            body["scored"] = seq.scored
        self.send("SCORE" if seq.kind is Kind.SCORE else "GENERATE", body)

    def cancel(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            sid = self._ids_of.pop(seq.seq_id, None)
            if seq.done or sid is None:
                continue
            seq.status = Status.CANCELLED  # (this is its scheduler: nothing else changes it here)
            del self._streams[sid]
            self.send(wire.CANCEL, {"stream_id": sid})

    # --- the connection --------------------------------------------------------------------

    def send(self, command: str, payload: Any) -> None:
        self._frames.append(wire.encode_frame(command, payload))
        self._ready.set()

    async def ask(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        """A command answered by one MSG entry (MODEL_INFO, TOKENIZER, CHAT): that entry."""
        if self.lost.is_set():
            raise LMQLError(LOST)
        sid = f"ask-{next(self._ids)}"
        future = self._asks[sid] = asyncio.get_running_loop().create_future()
        self.send(command, {**body, "stream_id": sid})
        try:
            return await asyncio.wait_for(future, ASK_TIMEOUT_S)
        finally:
            self._asks.pop(sid, None)

    async def _write(self) -> None:
        assert self._ws is not None
        while True:
            while not self._frames:
                self._ready.clear()
                await self._ready.wait()
            frame = self._frames.popleft()
            try:
                await self._ws.send_str(frame)
            except (ConnectionError, RuntimeError):  # the reader sees the end too
                return

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                command, payload = wire.parse_frame(message.data)
                if command == "TOKEN" and isinstance(payload, list):
                    self._deliver(payload)
                elif command == "MSG" and isinstance(payload, list):
                    for entry in payload:
                        self._answer(entry.get("stream_id"), entry)
        finally:
            self.lost.set()
            self._end_all()

    def _answer(self, sid: Any, entry: dict[str, Any]) -> None:
        future = self._asks.get(sid) if isinstance(sid, str) else None
        if future is None or future.done():
            if "error" in entry:
                log.warning("the engine's process said: %s", entry["error"])
            return
        if "error" in entry:
            future.set_exception(RequestError(str(entry["error"])))
        else:
            future.set_result(entry)

    def _deliver(self, entries: list[dict[str, Any]]) -> None:
        """A TOKEN frame's entries as each sequence's events, a sink's together (as the engine's step)."""
        events: dict[Any, list[TokenEvent]] = {}
        streams = self._streams
        for entry in entries:
            sid = entry.get("stream_id")
            seq = streams.get(sid) if type(sid) is int else None
            if seq is None or sid is None:  # a cancelled stream's last entries, or an answer's error
                self._answer(sid, entry)
                continue
            event = _event(seq.stream_id, entry)
            if event.finish_reason is not None or event.error is not None:
                del streams[sid]
                self._ids_of.pop(seq.seq_id, None)
                seq.status = Status.FINISHED
            events.setdefault(seq.sink, []).append(event)
        deliver_all(events)

    def _end_all(self) -> None:
        """The connection ended: every stream and question still open ends with an error."""
        streams, self._streams, self._ids_of = self._streams, {}, {}
        events: dict[Any, list[TokenEvent]] = {}
        for seq in streams.values():
            seq.status = Status.FINISHED
            events.setdefault(seq.sink, []).append(TokenEvent(seq.stream_id, error=LOST))
        deliver_all(events)
        for future in self._asks.values():
            if not future.done():
                future.set_exception(LMQLError(LOST))


def _event(stream_id: Any, entry: dict[str, Any]) -> TokenEvent:
    if "error" in entry:
        return TokenEvent(stream_id, error=str(entry["error"]))
    top = entry.get("top_logprobs")
    return TokenEvent(stream_id, entry["token"], entry["logprob"], _FINISHES[entry.get("finish_reason")],
                      None if top is None else {int(t): lp for t, lp in top.items()})


# --- the served models, as the engine's process describes them --------------------------------


@dataclass
class RemoteBackend:
    """What a front-end needs of a served model's backend, from its MODEL_INFO."""

    vocab_size: int
    max_context: int | None
    eos_token_id: int | None
    bos_token_id: int | None

    def close(self) -> None:
        """(The engine's process owns the model.)"""


class RemoteModel(LoadedModel):
    """A served model in a front-end: its engine is the ``Upstream``, its tokenizer the one the
    engine's process sent (TOKENIZER), its chat template rendered there (CHAT)."""

    def __init__(self, model_id: ModelId, backend: RemoteBackend, upstream: Upstream,
                 tokenizer: Tokenizer | None) -> None:
        super().__init__(model_id, cast(Any, backend), cast(Engine, upstream), {})
        self.upstream = upstream
        self._sent_tokenizer = tokenizer

    @cached_property
    def tokenizer(self) -> Tokenizer | None:
        return self._sent_tokenizer

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str | None:
        asked = {"model": self.model_id.served_name, "messages": messages}
        answer = await self.upstream.ask(wire.CHAT, asked)
        prompt = answer.get("chat_prompt")
        return prompt if isinstance(prompt, str) else None


async def remote_model(upstream: Upstream, name: str) -> RemoteModel:
    """The model the engine's process serves as ``name`` (loading it, where it loads on demand)."""
    info = (await upstream.ask("MODEL_INFO", {"model": name}))["model_info"]
    tokenizer = None
    if (info.get("extensions") or {}).get("tokenizer"):
        tokenizer = from_spec((await upstream.ask(wire.TOKENIZER, {"model": name}))["tokenizer"])
    served = str(info["model"])
    backend = RemoteBackend(int(info["vocab_size"]), info.get("max_context"), info.get("eos_token_id"),
                            info.get("bos_token_id"))
    return RemoteModel(ModelId(served, str(info.get("backend"))), backend, upstream, tokenizer)


class RemoteHost(ModelHost):
    """The models of the engine's process; one asked for by another name is looked up there."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.upstream = upstream
        self.loop = loop
        self._served_as: dict[str, str] = {}  # names asked for -> the served names they found

    def get(self, name: Any) -> LoadedModel:  # called off the event loop (``Session.model``)
        if not isinstance(name, str) or not name:
            raise RequestError("'model' must name the served model")
        served = self._served_as.get(name, name)
        if served not in self.models:
            model = asyncio.run_coroutine_threadsafe(remote_model(self.upstream, name), self.loop).result()
            served = self._served_as[name] = model.model_id.served_name
            self.models.setdefault(served, model)
        return self.models[served]

    def close(self) -> None:
        """(The engine's process owns the models.)"""

