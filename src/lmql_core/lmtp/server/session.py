"""One client's conversation with the engines: LMTP commands in, TOKEN and MSG frames out.

The websocket server wraps a session around each connection; the in-process transport uses a
session directly, without a socket. Both therefore accept and answer exactly the same things.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from lmql_core.engine.constraints import Constraint, GrammarError, GrammarSpec
from lmql_core.engine.sequence import Finish, Kind, SamplingParams, Sequence, TokenEvent
from lmql_core.errors import LMQLError, RequestError, shown
from lmql_core.lmtp import template, wire
from lmql_core.lmtp.server.outbox import Outbox, OutboxSink
from lmql_core.lmtp.server.template import TemplateRun
from lmql_core.loading.model_host import LoadedModel, ModelHost
from lmql_core.loading.tokenizer import IncrementalDecoder, spec_of

log = logging.getLogger(__name__)

Send = Callable[[str, Any], None]  # called on the session's event loop
# the wire names of the engine's finish reasons
FINISH_REASONS: wire.Reasons = {None: None, Finish.EOS: wire.STOP, Finish.SCORED: wire.STOP,
                                Finish.LENGTH: wire.LENGTH}
FORGET_SLACK = 64  # ended streams a session keeps before it looks for them (twice the running, plus this)
STALE_EVENTS_S = 10.0  # a cancelled sequence's last events reach the session within a step


def ignore_sends(command: str, payload: Any) -> None:
    """The ``send`` of a session whose answers nobody reads (a closed one's, from then on)."""


COMPILE_TIMEOUT_S = 10.0  # a grammar's compile (llguidance's limits bound it well below)


async def compile_constraint(model: LoadedModel, kind: str, value: Any) -> Constraint:
    """A request's regex, grammar or JSON schema compiled for ``model``, off the event loop;
    one that is invalid, too costly or matches nothing is a ``RequestError`` saying so."""
    try:
        spec = GrammarSpec.of(kind, value)
        return await asyncio.wait_for(asyncio.to_thread(model.grammars.compile, spec), COMPILE_TIMEOUT_S)
    except GrammarError as e:
        raise RequestError(str(e)) from None
    except asyncio.TimeoutError:  # not TimeoutError before Python 3.11
        raise RequestError(f"the {kind} took longer than {COMPILE_TIMEOUT_S:g} s to compile") from None


class Session:
    def __init__(self, host: ModelHost, send: Send, limits: wire.Limits | None = None,
                 encode_tokens: bool = False, outbox: Outbox | None = None, raw_events: bool = False,
                 clients: bool = False) -> None:
        """``encode_tokens``: send TOKEN payloads in their JSON form (``wire.Encoded``), for
        a transport that writes text anyway; written directly, that is cheaper than dictionaries.
        ``outbox``: shared with other sessions on this loop (default: one of its own).
        ``raw_events``: TOKEN payloads are the engine's ``TokenEvent``s themselves (a transport in
        this process that reads them directly; errors of requests still come as entries).
        ``clients``: a request's ``client`` tag makes it a client of its own in the engine's fair
        share (an OpenAI front-end's connection, which carries the requests of many)."""
        self.host = host
        self.raw_events = raw_events
        self.encode_tokens = encode_tokens
        self.limits = limits or wire.Limits()
        self._send = send
        self._loop = asyncio.get_running_loop()
        # the streams started here; each one's status is its engine's scheduler's to change:
        # those that ended are dropped when a new stream needs their id or room (``_running``)
        self._active: dict[Any, tuple[Sequence, LoadedModel]] = {}
        self._decoders: dict[Any, IncrementalDecoder] = {}  # streams in text mode
        self._outbox = outbox or Outbox(self._loop)  # delivered by the engine, not yet sent
        self._deliver = OutboxSink(self._outbox, self)  # (called on the engine thread)
        # ``clients``: the sinks of the tagged clients with streams (the scheduler shares by sink)
        self._clients: dict[Any, OutboxSink] | None = {} if clients else None
        # a template hole's events wake the event loop only when the hole ends (its client reads
        # whole holes): a wake-up costs the engine thread a turn for the interpreter's lock with
        # the loop, up to a third of a CPU step's time
        self._deliver_hole = OutboxSink(self._outbox, self, hold=True)
        # the engine's events wait in the outbox until ``take_events`` (unless one ends a stream):
        # for a consumer that reads them only now and then (a paced OpenAI stream)
        self.defers = False
        # streams ended by ``end_all``: events of theirs the engine had produced already are dropped
        self._stale: set[Any] = set()
        # template streams running: their tasks, and their runs (which take their events)
        self._templates: dict[Any, tuple[asyncio.Task[None], TemplateRun]] = {}
        self._forget_at = FORGET_SLACK  # streams started (``_active``) at which ended ones are dropped
        self.closed = False

    async def handle_text(self, text: str) -> None:
        try:
            command, payload = wire.parse_frame(text)
        except RequestError as e:
            self._error(None, str(e))
            return
        await self.handle(command, payload)

    async def handle(self, command: str, payload: Any) -> None:
        stream_id = None
        try:
            handler = self._handlers().get(command)
            if handler is None:
                expected = ", ".join(self._handlers())
                raise RequestError(f"unknown command '{shown(command)}' (expected {expected})")
            body = wire.require_object(payload, command)
            stream_id = wire.stream_id_of(body)
            await handler(stream_id, body)
        except LMQLError as e:
            self._error(stream_id, str(e))
        except Exception as e:  # never let one request take the connection down
            log.exception("request failed")
            self._error(stream_id, f"internal error: {type(e).__name__}: {shown(e, 200)}")

    async def start(self, command: str, body: dict[str, Any]) -> None:
        """Start a GENERATE or SCORE request (an LMTP body) with the same checks as ``handle``,
        but a bad request raises ``RequestError`` instead of being answered with an error entry:
        for a transport that answers errors in its own shape (``openai_compat``)."""
        await self._handlers()[command](wire.stream_id_of(body), body)

    def _handlers(self) -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
        return {"GENERATE": self._generate, "SCORE": self._score, "MODEL_INFO": self._model_info,
                wire.TOKENIZER: self._tokenizer, wire.CANCEL: self._cancel, wire.CHAT: self._chat}

    async def model(self, name: Any) -> LoadedModel:
        """The served model named ``name`` (loaded now where the server loads on demand)."""
        loaded = self.host.models.get(name) if isinstance(name, str) else None
        if loaded is None:  # not served yet: an error, or a load (off the event loop)
            loaded = await asyncio.to_thread(self.host.get, name)
        return loaded

    async def _generate(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self.model(body.get("model"))
        vocab = model.backend.vocab_size
        text_mode = "text" in body and "prompt" not in body
        if text_mode:
            prompt = self.encode(model, body.get("text"), "text", bos=True)
        else:
            prompt = wire.token_list(body.get("prompt"), "prompt", vocab)
        if body.get(template.TEMPLATE) is not None:
            self._start_template(stream_id, body, model, prompt)
            return
        params = SamplingParams(**wire.sampling_options(body, vocab, self.limits))
        self._check_context(model, len(prompt))
        asked = wire.constraint(body)
        if asked is not None:
            follow_forced = wire.fast_forward(body)
            params.constraint = await compile_constraint(model, *asked)
            params.constraint.fast_forward = follow_forced
        self._start(Sequence(stream_id, prompt, params, self._sink_for(body), request=body), model)
        if text_mode:
            assert model.tokenizer is not None
            skip = {model.tokenizer.eos_token_id} if model.tokenizer.eos_token_id is not None else set()
            self._decoders[stream_id] = IncrementalDecoder(model.tokenizer, skip)

    def _start_template(self, stream_id: Any, body: dict[str, Any], model: LoadedModel,
                        prompt: list[int]) -> None:
        """A GENERATE carrying a template (``lmtp/template.py``), run as a task of its own."""
        if not model.runs_templates():
            raise RequestError(f"'{model.model_id.served_name}' does not run templates (it needs a tokenizer "
                               "the server can send and an end-of-sequence token)")
        if "prompt" not in body:
            raise RequestError("a template GENERATE gives its first hole's prompt as token ids ('prompt')")
        parsed = template.template(body, model.backend.vocab_size, self.limits)
        earlier = self._templates.get(stream_id)
        if (earlier is not None and not earlier[0].done()) or stream_id in self._running():
            raise RequestError(f"stream {shown(stream_id)} is already running on this connection")
        if len(self._running()) + len(self._templates) >= self.limits.max_streams_per_connection:
            raise RequestError("this connection has too many streams running or queued (--max-streams)")

        def register(seq: Sequence, first: bool) -> None:
            self._active[stream_id] = (seq, model)
            model.engine.submit(seq, from_client=first)

        run = TemplateRun(stream_id, model, prompt, parsed, self._send_open, register, self._check_context,
                          FINISH_REASONS, self._deliver_hole)
        task = self._loop.create_task(run.run())
        self._templates[stream_id] = (task, run)
        task.add_done_callback(functools.partial(self._template_ended, stream_id))

    def _template_ended(self, stream_id: Any, task: asyncio.Task[None]) -> None:
        running = self._templates.get(stream_id)
        if running is not None and running[0] is task:
            del self._templates[stream_id]

    def _send_open(self, command: str, payload: Any) -> None:
        if not self.closed:
            self._send(command, payload)

    async def _score(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self.model(body.get("model"))
        vocab = model.backend.vocab_size
        if "text" in body and "prompt" not in body:
            prompt = self.encode(model, body.get("text"), "text", bos=True)
            scored = self.encode(model, body.get("scored_text"), "scored_text", bos=False)
        else:
            prompt = wire.token_list(body.get("prompt"), "prompt", vocab)
            scored = wire.token_list(body.get("scored"), "scored", vocab)
        self._check_context(model, len(prompt) + len(scored))
        params, sink = SamplingParams(max_tokens=0), self._sink_for(body)
        seq = Sequence(stream_id, prompt, params, sink, Kind.SCORE, scored, request=body)
        self._start(seq, model)

    def _sink_for(self, body: dict[str, Any]) -> OutboxSink:
        tag = body.get("client")
        if self._clients is None or tag is None:
            return self._deliver
        if not isinstance(tag, str | int) or isinstance(tag, bool):
            raise RequestError("'client' must be a string or an integer")
        sink = self._clients.get(tag)
        if sink is None:
            sink = self._clients[tag] = OutboxSink(self._outbox, self)
        return sink

    def encode(self, model: LoadedModel, value: Any, field: str, bos: bool) -> list[int]:
        """Text mode: the server tokenizes ``value`` (the request's ``field``); a prompt gets the
        model's BOS (``bos``), as LMQL clients send it."""
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise RequestError("text mode needs the model's tokenizer, which this server does not have; "
                               "send token ids in 'prompt' instead")
        text = wire.text({field: value}, field, model.backend.max_context)
        ids = tokenizer.encode(text, add_special_tokens=False)
        first = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
        if not first + ids:
            raise RequestError(f"'{field}' encodes to no tokens")
        return first + ids

    async def _tokenizer(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self.model(body.get("model"))
        spec = spec_of(model.tokenizer) if model.tokenizer is not None else None
        if spec is None:
            raise RequestError(f"the server has no tokenizer to send for '{model.model_id.served_name}'")
        self._send("MSG", [{"stream_id": stream_id, "model": model.model_id.served_name, "tokenizer": spec}])

    async def _model_info(self, stream_id: Any, body: dict[str, Any]) -> None:
        model = await self.model(body.get("model"))
        self._send("MSG", [{"stream_id": stream_id, "model": model.model_id.served_name,
                            "model_info": model.info()}])

    async def _chat(self, stream_id: Any, body: dict[str, Any]) -> None:
        """CHAT (an extension, what OpenAI front-end processes ask): the prompt the model's chat
        template makes of ``messages`` (None: it has none), answered as MSG ``chat_prompt``."""
        model = await self.model(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise RequestError("'messages' must be a list of objects")
        prompt = await model.chat_prompt(messages)
        name = model.model_id.served_name
        self._send("MSG", [{"stream_id": stream_id, "model": name, "chat_prompt": prompt}])

    async def _cancel(self, stream_id: Any, body: dict[str, Any]) -> None:
        """CANCEL (an extension): stop the stream and free it. Nothing is answered; a stream
        that is unknown or already finished is ignored. Entries already on their way may
        still arrive."""
        self.cancel(stream_id)

    def cancel(self, stream_id: Any) -> None:
        """Stop a stream and free it (as CANCEL)."""
        active = self._active.pop(stream_id, None)
        self._decoders.pop(stream_id, None)
        running = self._templates.pop(stream_id, None)
        if running is not None:
            running[0].cancel()
            running[1].stop()  # its hole running now (the engine may have started it)
            self._outbox.drop(self, {stream_id})  # its hole's events held until the hole's end
        if active is not None:
            seq, model = active
            model.engine.cancel([seq])

    def _check_context(self, model: LoadedModel, length: int) -> None:
        limit = model.backend.max_context
        if limit is not None and length >= limit:
            raise RequestError(f"the prompt has {length} tokens; this model's context holds {limit}")

    def _start(self, seq: Sequence, model: LoadedModel) -> None:
        earlier = self._active.get(seq.stream_id)
        if (earlier is not None and not earlier[0].done) or seq.stream_id in self._templates:
            raise RequestError(f"stream {shown(seq.stream_id)} is already running on this connection")
        if len(self._active) >= min(self._forget_at, self.limits.max_streams_per_connection):
            self._running()  # the ended streams forgotten, now and then (an OpenAI front-end's
            self._forget_at = 2 * len(self._active) + FORGET_SLACK  # connection starts millions)
        if len(self._active) >= self.limits.max_streams_per_connection:
            raise RequestError(f"this connection has {len(self._active)} streams running or queued, the most "
                               "the server allows (--max-streams); send more when some have finished")
        self._stale.discard(seq.stream_id)
        self._active[seq.stream_id] = (seq, model)
        model.engine.submit(seq)

    def take_events(self) -> None:
        """The events the engine delivered and the outbox holds, sent now (``defers``)."""
        self._outbox.take(self)

    def send_events(self, events: list[TokenEvent]) -> None:
        """On the event loop: the events the engine delivered since the last call, as one frame."""
        if self._stale:
            events = [e for e in events if e.stream_id not in self._stale]
        if self._templates:
            events = self._take_template_events(events)
        if not events:
            return
        entries: list[dict[str, Any]] | wire.Encoded | list[TokenEvent]
        if self.raw_events and not self._decoders:
            entries = events
        elif self.encode_tokens and not self._decoders:  # text mode's entries carry decoded text too
            entries = wire.token_entries_json(events, FINISH_REASONS)
        else:
            entries = [self._entry(e) for e in events]
        if self._decoders:  # text mode: a stream's decoder goes with its last event
            for e in events:
                if e.finish_reason is not None or e.error is not None:
                    self._decoders.pop(e.stream_id, None)
        if not self.closed:
            self._send("TOKEN", entries)

    def _take_template_events(self, events: list[TokenEvent]) -> list[TokenEvent]:
        """Hands the template streams' events to their runs and sends the entries they answer (one
        frame for all); the other events are left to send."""
        runs, others = self._templates, []
        by_run: dict[Any, list[TokenEvent]] = {}
        for event in events:
            if event.stream_id in runs:
                by_run.setdefault(event.stream_id, []).append(event)
            else:
                others.append(event)
        sent: list[TokenEvent | dict[str, Any]] = []
        holes: list[int] = []
        for sid, taken in by_run.items():
            now, now_holes = runs[sid][1].take(taken)
            sent += now
            holes += now_holes
        if sent and not self.closed:
            tagged = zip(sent, holes, strict=True)
            self._send("TOKEN", wire.token_entries_json(sent, FINISH_REASONS, holes) if self.encode_tokens
                       else [e if isinstance(e, dict) else wire.tagged_entry(e, FINISH_REASONS, h)
                             for e, h in tagged])
        return others

    def _entry(self, event: TokenEvent) -> dict[str, Any]:
        entry = wire.token_entry(event, FINISH_REASONS)
        decoder = self._decoders.get(event.stream_id)
        if decoder is not None and event.error is None:  # text mode: the decoded text so far
            entry["text"] = decoder.push(event.token)
            if event.finish_reason is not None:
                entry["text"] += decoder.flush()
        return entry

    def _error(self, stream_id: Any, message: str) -> None:
        self._send("TOKEN", [{"stream_id": stream_id, "error": message}])

    def _running(self) -> dict[Any, tuple[Sequence, LoadedModel]]:
        """The streams that have not ended (their scheduler says), once those that did are forgotten
        (and the clients left without any)."""
        self._active = {sid: active for sid, active in self._active.items() if not active[0].done}
        if self._clients:
            sinks = {id(seq.sink) for seq, _ in self._active.values()}
            self._clients = {tag: sink for tag, sink in self._clients.items() if id(sink) in sinks}
        return self._active

    def has_streams(self) -> bool:
        return bool(self._running()) or bool(self._templates)

    def end_all(self, message: str) -> None:
        """End every stream of this session with an error entry; the session goes on."""
        ended = [*self._running(), *self._templates]  # (a template's later holes: not in _active)
        self._cancel_all()
        self._stale.update(ended)
        self._outbox.drop(self, self._stale)  # their tokens not sent yet are dropped with them
        self._loop.call_later(STALE_EVENTS_S, self._stale.difference_update, ended)
        self._send("TOKEN", [{"stream_id": sid, "error": message} for sid in ended])

    def close(self) -> None:
        """The client went away: stop its sequences so the engine frees their memory. Nothing
        is sent any more, and the session lets go of its transport's ``send`` (which holds the
        transport, which holds the session): the pair is freed as the request ends instead of
        by the garbage collector, whose pauses stop every thread."""
        self.closed = True
        self._send = ignore_sends
        self._cancel_all()

    def _cancel_all(self) -> None:
        by_engine: dict[int, tuple[Any, list[Sequence]]] = {}
        # those that ended are left alone: cancelling takes the engine's lock (held while it
        # schedules a step) and wakes its thread, for nothing (an OpenAI request ends so, each time)
        for seq, model in self._active.values():
            if not seq.done:
                by_engine.setdefault(id(model.engine), (model.engine, []))[1].append(seq)
        for engine, seqs in by_engine.values():
            engine.cancel(seqs)
        for task, run in self._templates.values():
            task.cancel()
            run.stop()
        self._templates.clear()
        self._active.clear()
        self._decoders.clear()
