"""Running a template GENERATE (``lmtp/template.py``): its holes one after another, each an engine
sequence under its constraints (``engine.mask_constraint``), in one stream.

Each hole's prompt is built as the query runtime builds it (LMQL 0.7's rule, ``Vocabulary.prompt_after``):
the first hole's is the request's ``prompt``; the next one's is the previous prompt, then the
previous value's prompt text and the text after it, tokenized separately (or the previous prompt
and the generated tokens, where neither changed anything). A value's prompt text is its text cut
by its stopping phrases and postprocessed by its kinds (INT: the number). Entries carry
``"hole": i`` (and ``"finish_reason": null``, as a plain stream's); the last one of each hole
carries ``"hole_finish"`` (``stop`` or ``length``) and no ``finish_reason``, the template's very
last one ``finish_reason`` instead. A hole with no room left (its ``max_length`` reached before
it) gets one entry without a token. A hole whose value cannot be postprocessed (INT without a
digit) ends the template there: the client meets the same error replaying it. A hole's entries go
out together once it has ended: the client reads whole holes, and each wake-up of the event loop
costs the engine thread (``Session._deliver_hole``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lmql_core.constraints.kinds import NoDigits, Rule
from lmql_core.constraints.mask import MaskPending
from lmql_core.constraints.tree import Decided
from lmql_core.constraints.vocabulary import Vocabulary, slow_masks_deferred
from lmql_core.engine.mask_constraint import MaskConstraint, mask_words
from lmql_core.engine.sequence import SamplingParams, Sequence, Sink, TokenEvent
from lmql_core.errors import LMQLError, shown
from lmql_core.lmtp import wire
from lmql_core.lmtp.template import Hole, Template
from lmql_core.loading.model_host import LoadedModel

log = logging.getLogger(__name__)
Send = Callable[[str, Any], None]  # the session's: a frame to the client
# the session's: start the hole's sequence, as the stream's (True: the first hole, sent by the client)
Register = Callable[[Sequence, bool], None]
CheckContext = Callable[[LoadedModel, int], None]  # the session's: a prompt past the context is an error


class TemplateRun:
    """One template stream. ``register(seq)``: the session learns the hole running now (so CANCEL
    and closing the connection stop it). Each hole's sequence delivers to ``sink`` (the session's,
    so that a step's events of every stream go out in one frame); the session hands this stream's
    events to ``take``, which answers the entries to send now; a hole's last event wakes ``run``
    to start the next hole."""

    def __init__(self, stream_id: Any, model: LoadedModel, prompt: list[int], template: Template,
                 send: Send, register: Register, check_context: CheckContext, reasons: wire.Reasons,
                 sink: Sink) -> None:
        self.stream_id, self.model, self.template = stream_id, model, template
        self.prompt = prompt
        self.send, self.register, self.check_context, self.reasons = send, register, check_context, reasons
        self.sink = sink
        self.eos = model.backend.eos_token_id
        self._hole: _HoleTokens | None = None  # the hole running now

    async def run(self) -> None:
        try:
            await self._run()
        except LMQLError as e:
            self.send("TOKEN", [{"stream_id": self.stream_id, "error": str(e)}])
        except Exception as e:  # never leave the client waiting for an end that will not come
            log.exception("template failed")
            self.send("TOKEN", [{"stream_id": self.stream_id,
                                 "error": f"internal error: {type(e).__name__}: {shown(e, 200)}"}])

    async def _run(self) -> None:
        assert self.model.tokenizer is not None, "the extension is advertised with a tokenizer only"
        vocab = Vocabulary.of(self.model.tokenizer)
        if not vocab.prepared:  # every token's text and what masks read of it, once (seconds)
            await asyncio.to_thread(vocab.prepare)
        values: dict[int, Decided] = {}
        prompt, holes = self.prompt, self.template.holes
        for index, hole in enumerate(holes):
            rule = hole.rule.bound(values, vocab) if hole.rule is not None else None
            budget = hole.max_length - len(prompt)
            ids: list[int]
            last: dict[str, Any]
            if budget <= 0:
                ids, last = [], {"stream_id": self.stream_id}
            else:
                self.check_context(self.model, len(prompt))
                ended = await self._generate(index, hole, rule, prompt, budget, vocab)
                if ended is None:
                    return
                ids, last = ended
            prompt_text = _prompt_text(rule, vocab, ids)
            final = prompt_text is None or index == len(holes) - 1
            last["hole"] = index
            reason = last.pop("finish_reason", None) or wire.LENGTH
            last["finish_reason" if final else "hole_finish"] = reason
            self.send("TOKEN", [last])
            if final or prompt_text is None:
                return
            values[index] = (prompt_text, len(ids))
            following = self.template.texts[index]
            prompt = vocab.prompt_after(prompt, ids, vocab.decode(ids), prompt_text, following)

    async def _generate(self, index: int, hole: Hole, rule: Rule | None, prompt: list[int], budget: int,
                        vocab: Vocabulary) -> tuple[list[int], dict[str, Any]] | None:
        """The hole's tokens (without EOS) and its last entry, not sent yet; None: an error ended it."""
        params = SamplingParams(**{**hole.sampling, "max_tokens": budget})
        if rule is not None:
            params.constraint = MaskConstraint(rule, vocab, mask_words(self.model.backend.vocab_size, vocab))
            await _first_step(params.constraint)
        seq = Sequence(self.stream_id, list(prompt), params, self.sink)
        self._hole = running = _HoleTokens(index)
        self.register(seq, index == 0)
        try:
            return await running.ended
        finally:
            if not running.ended.done():  # cancelled: CANCEL, or the connection went away
                self.model.engine.cancel([seq])

    def take(self, events: list[TokenEvent]) -> tuple[list[TokenEvent], int]:
        """On the event loop: this stream's events of the running hole (in order): those to send
        now (as ``wire.tagged_entry`` with the hole's index, also answered; an error as it is),
        its last one (the hole's end, or an error) handed to ``_generate``."""
        hole, sent = self._hole, list[TokenEvent]()
        if hole is None:
            return sent, -1
        for event in events:
            if hole.ended.done():  # (events after the end: none are made)
                break
            if event.error is not None:
                sent.append(event)
                hole.ended.set_result(None)
                break
            if event.token != self.eos:
                hole.ids.append(event.token)
            if event.finish_reason is not None:
                hole.ended.set_result((hole.ids, wire.token_entry(event, self.reasons)))
            else:
                sent.append(event)
        return sent, hole.index


class _HoleTokens:
    """The running hole's tokens so far, and its end: (tokens, last entry), or None (an error)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.ids: list[int] = []
        self.ended: asyncio.Future[tuple[list[int], dict[str, Any]] | None] = \
            asyncio.get_running_loop().create_future()


async def _first_step(constraint: MaskConstraint) -> None:
    """The hole's first step, before the engine samples it: here where it is quick, else on a
    thread (a REGEX state's first mask: milliseconds no other stream should wait for)."""
    try:
        with slow_masks_deferred():
            constraint.prepare([])
    except MaskPending:
        await asyncio.to_thread(constraint.prepare, [])


def _prompt_text(rule: Rule | None, vocab: Vocabulary, ids: list[int]) -> str | None:
    """What the value puts in the prompt (None: INT without a digit, which ends the template)."""
    value = vocab.value(ids)
    if rule is None:
        return value.text
    cut = rule.trim(value)
    try:
        return rule.postprocess(value.text if cut is None else cut)[0]
    except NoDigits:
        return None
