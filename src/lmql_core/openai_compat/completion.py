"""One completion: its choices run as LMTP streams on a session of its own, read whole or as
stream chunks (server-sent events), paced where many streams share the event loop."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from lmql_core.engine.sequence import TokenEvent
from lmql_core.errors import RequestError
from lmql_core.lmtp import wire
from lmql_core.lmtp.server.outbox import Outbox
from lmql_core.lmtp.server.session import FINISH_REASONS, Session
from lmql_core.loading.model_host import LoadedModel, ModelHost
from lmql_core.openai_compat import chunk_json
from lmql_core.openai_compat.choices import LENGTH, Choice, chat_logprobs, completion_logprobs
from lmql_core.openai_compat.pacing import MIN_PAUSE_S, StreamPacer
from lmql_core.openai_compat.prompts import chat_ids, encode, served_model, tokenizer_of
from lmql_core.openai_compat.requests import CompletionRequest, OpenAIError, bad_request

SHUTTING_DOWN = "shutting down"  # in the engine's error when the server stops
DONE = b"data: [DONE]\n\n"
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options builds one per call
# completions' ids: 128 random bits as uuid4().hex writes them, without its system call per request
# (~10 us: a 64-request burst waits for every request's set-up); the ids name, they guard nothing
_IDS = random.Random()
Delta = TypeVar("Delta", dict[str, Any], str)  # a choice's delta, as a dictionary or as its JSON


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event of a stream."""
    return b"data: " + _JSON.encode(payload).encode() + b"\n\n"


class Completion:
    """One request's choices, each an LMTP stream of the request's own session (stream id: the
    choice's index); with ``echo``, a SCORE stream per prompt gives the prompt's log-probs."""

    def __init__(self, host: ModelHost, limits: wire.Limits, request: CompletionRequest,
                 outbox: Outbox | None = None, pacer: StreamPacer | None = None) -> None:
        """``outbox``: shared by the completions on one event loop (one wake-up per engine step);
        ``pacer``: spaces the stream's events when many streams share the loop."""
        self.request = request
        self.pacer = pacer
        self.limits = limits
        self.session = Session(host, self._receive, limits, outbox=outbox, raw_events=True)
        kind = "chatcmpl" if request.chat else "cmpl"
        self.id = f"{kind}-{_IDS.getrandbits(128):032x}"
        self.created = int(time.time())
        self.choices: list[Choice] = []
        self.prompt_tokens = 0
        self._echoes: dict[str, tuple[list[int], list[dict[str, Any]], list[Choice]]] = {}
        self._changed = False  # news since the stream last looked (``_next_change``)
        self._waiting: asyncio.Future[None] | None = None  # the stream waiting for news
        self._pause: asyncio.Future[None] | None = None  # a paced stream waiting for its next event
        self._finish_sent: set[int] = set()
        self.closed = False

    async def begin(self) -> None:
        request = self.request
        model = await served_model(self.session, request.model)
        tokenizer = tokenizer_of(model)
        prompts = ([await chat_ids(self.session, model, request.messages)] if request.chat
                   else [self._prompt_ids(model, p) for p in request.prompts])
        self._check_room(model, prompts)
        try:
            for p, ids in enumerate(prompts):
                self.prompt_tokens += len(ids)
                mine = [self._new_choice(tokenizer, model) for _ in range(request.n)]
                if request.echo:
                    original = request.prompts[p]
                    prefix = original if isinstance(original, str) else tokenizer.decode(ids)
                    await self._start_echo(p, ids, prefix, mine)
                for i, choice in enumerate(mine):
                    await self._start_choice(choice, ids, i)
        except RequestError as e:
            raise bad_request(str(e)) from None

    def _prompt_ids(self, model: LoadedModel, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return encode(self.session, model, prompt, "prompt", bos=True)
        try:
            return wire.token_list(prompt, "prompt", model.backend.vocab_size)
        except RequestError as e:
            raise bad_request(str(e), "prompt") from None

    def _check_room(self, model: LoadedModel, prompts: list[list[int]]) -> None:
        request = self.request
        streams = len(prompts) * (request.n + request.echo)
        if streams > self.limits.max_streams_per_connection:
            raise OpenAIError(429, f"this request asks for {streams} streams; the server runs at most "
                              f"{self.limits.max_streams_per_connection} for one request (--max-streams)",
                              kind="rate_limit_exceeded", code="rate_limit_exceeded")
        context = model.backend.max_context
        longest = max(map(len, prompts))
        if context is not None and longest + (request.max_tokens or 0) > context:
            raise bad_request(f"this model's maximum context length is {context} tokens; this request asks "
                              f"for {longest + (request.max_tokens or 0)} ({longest} in the prompt, "
                              f"{request.max_tokens} for the completion)", "max_tokens")

    def _new_choice(self, tokenizer: Any, model: LoadedModel) -> Choice:
        request = self.request
        choice = Choice(len(self.choices), tokenizer, request.stop, request.stop_token_ids,
                        model.backend.eos_token_id, request.tokens_as_ids, request.logprobs is not None)
        self.choices.append(choice)
        return choice

    async def _start_echo(self, p: int, ids: list[int], prefix: str, choices: list[Choice]) -> None:
        for choice in choices:
            choice.prefix = prefix
        if len(ids) == 1:  # nothing to score: the first token has no log-prob
            self._set_prefix_logprobs(ids, [], choices)
            return
        stream_id = f"echo-{p}"
        self._echoes[stream_id] = (ids, [], choices)
        await self.session.start("SCORE", {"stream_id": stream_id, "model": self.request.model,
                                           "prompt": ids[:1], "scored": ids[1:]})

    @staticmethod
    def _set_prefix_logprobs(ids: list[int], scored: list[dict[str, Any]], choices: list[Choice]) -> None:
        """The prompt's log-probs (SCORE entries for its tokens after the first), as echo shows them."""
        for choice in choices:
            choice.prefix_logprobs = [choice.token_logprob(ids[0], None, None)] + [
                choice.token_logprob(e["token"], e["logprob"], {str(e["token"]): e["logprob"]})
                for e in scored]

    async def _start_choice(self, choice: Choice, ids: list[int], i: int) -> None:
        request = self.request
        if request.max_tokens == 0:  # echo alone: the prompt scored, nothing generated
            choice.finish_reason = LENGTH
            return
        sampling = dict(request.sampling)
        if "seed" in sampling and isinstance(sampling["seed"], int) and i:
            sampling["seed"] = (sampling["seed"] + i) % (wire.MAX_SEED + 1)  # each choice its own noise
        await self.session.start("GENERATE", {
            **sampling, "stream_id": choice.index, "model": request.model, "prompt": ids,
            "max_tokens": request.max_tokens, "top_logprobs": request.logprobs or 0})

    # --- results, as the engine delivers them (on the event loop) ----------------------------

    def _receive(self, command: str, payload: Any) -> None:
        """TOKEN payloads: the engine's events (``raw_events``), or entries (errors)."""
        choices = self.choices
        ended = False  # a choice may have ended here (what ends a paced stream's pause)
        for entry in payload if isinstance(payload, list) else []:
            if type(entry) is TokenEvent:
                sid = entry.stream_id
                if entry.error is None and type(sid) is int and 0 <= sid < len(choices):
                    finish = None if entry.finish_reason is None else FINISH_REASONS[entry.finish_reason]
                    if choices[sid].add_event(entry, finish):
                        self.session.cancel(sid)
                        ended = True
                    ended = ended or finish is not None
                    continue
                entry = wire.token_entry(entry, FINISH_REASONS)
            ended = True
            sid = entry.get("stream_id")
            if isinstance(sid, int) and 0 <= sid < len(self.choices):
                if self.choices[sid].add(entry):
                    self.session.cancel(sid)  # a stop string or stop token: the engine may stop
            elif sid in self._echoes:
                self._echo_entry(sid, entry)
        self._changed = True
        if self._waiting is not None:
            _resolve(self._waiting)
        if ended and self._pause is not None and self._ending():
            _resolve(self._pause)

    def _echo_entry(self, sid: str, entry: dict[str, Any]) -> None:
        ids, entries, choices = self._echoes[sid]
        if "error" in entry:
            for choice in choices:
                choice.error = str(entry["error"])
        else:
            entries.append(entry)
        if "error" in entry or entry.get("finish_reason") is not None:
            self._set_prefix_logprobs(ids, entries, choices)
            del self._echoes[sid]

    def _finished(self) -> bool:
        return not self._echoes and all(choice.done for choice in self.choices)

    async def _next_change(self) -> None:
        if self.closed:
            raise OpenAIError(499, "the client went away")
        if not self._changed:  # a future, not an asyncio.Event: set every step, this is cheaper
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None
        self._changed = False

    def _raise_errors(self) -> None:
        for choice in self.choices:
            if choice.error is not None:
                if SHUTTING_DOWN in choice.error:
                    raise OpenAIError(503, choice.error, kind="service_unavailable")
                raise OpenAIError(500, choice.error, kind="server_error")

    async def result(self) -> dict[str, Any]:
        """The whole answer, once every choice has ended."""
        while not self._finished():
            await self._next_change()
        self._raise_errors()
        return {"id": self.id, "object": "chat.completion" if self.request.chat else "text_completion",
                "created": self.created, "model": self.request.model,
                "choices": [self._whole(choice) for choice in self.choices], "usage": self.usage()}

    def _whole(self, choice: Choice) -> dict[str, Any]:
        k = self.request.logprobs
        items = choice.prefix_logprobs + choice.logprobs
        if self.request.chat:
            return {"index": choice.index, "message": {"role": "assistant", "content": choice.text},
                    "logprobs": None if k is None else chat_logprobs(items, k),
                    "finish_reason": choice.finish_reason}
        return {"index": choice.index, "text": choice.prefix + choice.text,
                "logprobs": None if k is None else completion_logprobs(items, 0),
                "finish_reason": choice.finish_reason}

    def usage(self) -> dict[str, int]:
        generated = sum(choice.tokens for choice in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": generated,
                "total_tokens": self.prompt_tokens + generated}

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The answer as stream chunks: text as it is decoded, each choice's end, then (asked
        with ``stream_options.include_usage``) the usage. A consumer that falls behind gets the
        tokens produced meanwhile in one chunk per choice (text and log-probs concatenated)."""
        head = self._chunk_head()
        async for deltas in self._deltas(self._delta):
            for delta in deltas:
                yield {**head, "choices": [delta]}
        if self.request.include_usage:
            yield self._usage_chunk()

    async def sse(self) -> AsyncIterator[bytes]:
        """``chunks()`` as the bytes of server-sent events, those ready together in one piece; the
        last piece ends with ``data: [DONE]`` (the choices' ends, the usage and ``[DONE]`` in one
        piece: one write); an error after the start is an event of the stream. Ends without
        ``[DONE]`` when the client went away (``close``)."""
        head = _JSON.encode(self._chunk_head())[:-1].encode()
        prefix, suffix = b"data: " + head + b',"choices":[', b"]}\n\n"
        last = b""
        try:
            async for deltas in self._deltas(self._delta_json):
                events = b"".join([prefix + delta.encode() + suffix for delta in deltas])
                if len(self._finish_sent) < len(self.choices):
                    yield events
                else:  # the stream's end: it goes with [DONE]
                    last = events
            tail = sse_event(self._usage_chunk()) if self.request.include_usage else b""
        except OpenAIError as error:
            if error.status == 499:  # nobody to tell
                return
            tail = sse_event(error.body())
        yield last + tail + DONE

    async def _deltas(self, make: Callable[[Choice, list[int]], Delta | None]) -> AsyncIterator[list[Delta]]:
        """Each time the engine has delivered (or, paced, after the pause): the choices' news
        since the last time, each made by ``make`` (``_delta`` or ``_delta_json``)."""
        offsets = [0] * len(self.choices)
        pacer, loop = self.pacer or StreamPacer(0), asyncio.get_running_loop()
        pacer.streams += 1
        last_sent = 0.0
        try:
            while True:
                if not self._echoes:  # the prompts' log-probs go first
                    self._raise_errors()
                    news = (make(choice, offsets) for choice in self.choices)
                    deltas = [d for d in news if d is not None]
                    if deltas:
                        yield deltas
                        last_sent = loop.time()
                    if len(self._finish_sent) == len(self.choices):
                        break
                wait = pacer.pause() - (loop.time() - last_sent)
                if wait >= MIN_PAUSE_S and not self._ending():
                    await self._paused_deferring(loop, wait)
                await self._next_change()
        finally:
            pacer.streams -= 1

    async def _paused_deferring(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """``_paused``, the engine's events meanwhile left in the outbox (``Session.defers``: no
        wake-up of the loop, nor of this completion, per engine step) and taken at its end; an
        event that ends a stream still comes at once. Not with stop strings or stop tokens: the
        engine's stream is cancelled at the token that stops it, so each is looked at when it comes."""
        self.session.defers = not self.request.stop and not self.request.stop_token_ids
        try:
            await self._paused(loop, seconds)
        finally:
            self.session.defers = False
            self.session.take_events()

    def _ending(self) -> bool:
        """A choice has ended (or failed) and its stream has not said so yet: what a paced stream
        does not wait for, so that a paced answer ends as soon as an unpaced one."""
        sent = self._finish_sent
        return self.closed or any(choice.done and choice.index not in sent for choice in self.choices)

    async def _paused(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """``seconds``, or less where a choice ends meanwhile (``_receive``) or the client goes away."""
        self._pause = loop.create_future()
        timer = loop.call_later(seconds, _resolve, self._pause)
        try:
            await self._pause
        finally:
            timer.cancel()
            self._pause = None

    def _usage_chunk(self) -> dict[str, Any]:
        return {**self._chunk_head(), "choices": [], "usage": self.usage()}

    def _news(self, choice: Choice) -> tuple[str, str | None, bool] | None:
        """What a stream's next event says of ``choice`` (its text, finish reason, and whether it
        is a chat stream's first; its log-probs the caller takes), marked as sent; None: nothing new."""
        if choice.index in self._finish_sent:
            return None
        if choice.settle():  # the tokens since the last event, decoded together
            self.session.cancel(choice.index)
        text = choice.releasable_text()
        all_sent = choice.sent_text == len(choice.prefix) + len(choice.text)
        finish = choice.finish_reason if choice.done and all_sent else None
        first = self.request.chat and not choice.role_sent
        if not text and finish is None and not first and not choice.logprobs_unsent():
            return None
        if finish is not None:
            self._finish_sent.add(choice.index)
        choice.role_sent = True
        return text, finish, first

    def _delta(self, choice: Choice, offsets: list[int]) -> dict[str, Any] | None:
        news = self._news(choice)
        if news is None:
            return None
        text, finish, first = news
        items = choice.new_logprobs()
        k = self.request.logprobs
        body: dict[str, Any] = {"index": choice.index}
        if self.request.chat:
            body["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
            body["logprobs"] = None if k is None else chat_logprobs(items, k)
        else:
            body["text"] = text
            body["logprobs"] = None if k is None else completion_logprobs(items, offsets[choice.index])
            offsets[choice.index] += sum(item.length for item in items)
        body["finish_reason"] = finish
        return body

    def _delta_json(self, choice: Choice, offsets: list[int]) -> str | None:
        """``delta_json(self._delta(choice, offsets))``; a /v1/completions delta written directly
        (its log-probs from the engine's events where none are made yet: ``events_logprobs_json``)."""
        if self.request.chat:
            delta = self._delta(choice, offsets)
            return None if delta is None else chunk_json.delta_json(delta)
        news = self._news(choice)
        if news is None:
            return None
        text, finish, _ = news
        events = choice.new_logprob_events()
        logprobs = None
        if events is None:
            items = choice.new_logprobs()
            if self.request.logprobs is not None:
                logprobs = chunk_json.completion_logprobs_json(items, offsets[choice.index])
                offsets[choice.index] += sum(item.length for item in items)
        elif self.request.logprobs is not None:
            i = choice.index
            logprobs, offsets[i] = chunk_json.events_logprobs_json(choice, events, offsets[i])
        return chunk_json.completion_delta_json(choice.index, text, logprobs, finish)

    def _chunk_head(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.request.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.request.model}

    def close(self) -> None:
        """The client went away (or the request failed): the engine stops its streams."""
        self.closed = True
        self.session.close()
        self._changed = True
        if self._waiting is not None:
            _resolve(self._waiting)
        if self._pause is not None:
            _resolve(self._pause)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
