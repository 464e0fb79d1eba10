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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmql_core.constraints.kinds import NoDigits, Rule
from lmql_core.constraints.mask import MaskPending
from lmql_core.constraints.tree import Decided
from lmql_core.constraints.vocabulary import Vocabulary, slow_masks_deferred
from lmql_core.engine.mask_constraint import MaskConstraint, mask_words
from lmql_core.engine.sequence import SamplingParams, Sequence, Sink, TokenEvent
from lmql_core.errors import LMQLError, RequestError, shown
from lmql_core.lmtp import wire
from lmql_core.lmtp.template import Hole, Template
from lmql_core.loading.model_host import LoadedModel

log = logging.getLogger(__name__)
Send = Callable[[str, Any], None]  # the session's: a frame to the client
# the session's: start the hole's sequence, as the stream's (True: the first hole, sent by the client)
Register = Callable[[Sequence, bool], None]
CheckContext = Callable[[LoadedModel, int], None]  # the session's: a prompt past the context is an error


@dataclass(frozen=True)
class _Progress:
    """Where a template stream stands: the hole running now (``index``), its prompt, its bound
    rule and the values before it. Replaced whole by whoever starts a hole: the event loop, or
    the engine thread going on from the hole before (``TemplateRun.after``)."""

    index: int
    prompt: list[int]
    values: dict[int, Decided]
    rule: Rule | None = None


@dataclass(frozen=True)
class _Next:
    """A hole's end, and what comes after it, as computed for the engine thread."""

    seq: Sequence
    progress: _Progress


class TemplateRun:
    """One template stream. ``register(seq)``: the session learns the hole running now (so CANCEL
    and closing the connection stop it). Each hole's sequence delivers to ``sink`` (the session's,
    so that a step's events of every stream go out in one frame); the session hands this stream's
    events to ``take``, which answers the entries to send now.

    Where it can, the engine thread starts the next hole itself as a hole ends (``after``: this
    run is each hole's ``SamplingParams.then``), so that the stream is back in the batch at the
    next step instead of after a round trip through the event loop; ``take`` then sends the
    hole's end as ``run`` would. Where it cannot (the last hole, a value that ends the template, a
    hole with no room or past the context, a slow first mask, an error), the hole's end wakes
    ``run``, which goes on from there as before."""

    def __init__(self, stream_id: Any, model: LoadedModel, prompt: list[int], template: Template,
                 send: Send, register: Register, check_context: CheckContext, reasons: wire.Reasons,
                 sink: Sink) -> None:
        self.stream_id, self.model, self.template = stream_id, model, template
        self.send, self.register, self.check_context, self.reasons = send, register, check_context, reasons
        self.sink = sink
        self.eos = model.backend.eos_token_id
        self.stopped = False  # (``Continuation``) the stream was cancelled: the engine starts no hole
        self.current: Sequence | None = None  # the hole's sequence running now
        self._progress = _Progress(0, prompt, {})
        self._vocab: Vocabulary | None = None
        self._hole: _HoleTokens | None = None  # the hole running now, as the event loop sees it
        self._went_on: deque[int] = deque()  # holes the engine went on after, their ends not taken yet
        self._next: _Next | None = None  # (engine thread) between ``after`` and ``started``

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
        self._vocab = vocab
        while True:
            self._progress = progress = self._bound(self._progress, vocab)
            hole = self.template.holes[progress.index]
            budget = hole.max_length - len(progress.prompt)
            ids: list[int]
            last: dict[str, Any]
            if budget <= 0:
                ids, last = [], {"stream_id": self.stream_id}
            else:
                self.check_context(self.model, len(progress.prompt))
                ended = await self._generate(hole, progress.rule, progress.prompt, budget)
                if ended is None:
                    return
                ids, last = ended
                progress = self._progress  # the hole that ended: maybe later ones ran on the engine thread
            following = self._after(progress, ids, vocab)
            self.send("TOKEN", [_hole_end(last, progress.index, following is None)])
            if following is None:
                return
            self._progress = following

    def _bound(self, progress: _Progress, vocab: Vocabulary) -> _Progress:
        """``progress`` with its hole's rule bound to the values before it."""
        rule = self.template.holes[progress.index].rule
        return _Progress(progress.index, progress.prompt, progress.values,
                         rule.bound(progress.values, vocab) if rule is not None else None)

    def _after(self, progress: _Progress, ids: list[int], vocab: Vocabulary) -> _Progress | None:
        """Where the template stands after ``progress``'s hole ended with ``ids``: the next hole,
        its prompt and the values before it (its rule not bound yet); None: it has ended."""
        if progress.index == len(self.template.holes) - 1:
            return None
        prompt_text = _prompt_text(progress.rule, vocab, ids)
        if prompt_text is None:
            return None
        following = self.template.texts[progress.index]
        prompt = vocab.prompt_after(progress.prompt, ids, vocab.decode(ids), prompt_text, following)
        values = {**progress.values, progress.index: (prompt_text, len(ids))}
        return _Progress(progress.index + 1, prompt, values)

    async def _generate(self, hole: Hole, rule: Rule | None, prompt: list[int],
                        budget: int) -> tuple[list[int], dict[str, Any]] | None:
        """The tokens (without EOS) of the hole that ends without the engine going on, and its
        last entry, not sent yet; None: an error ended it."""
        params = self._params(hole, rule, budget)
        if params.constraint is not None:
            await _first_step(params.constraint)
        seq = Sequence(self.stream_id, list(prompt), params, self.sink)
        self._hole = running = _HoleTokens(self._progress.index, asyncio.get_running_loop().create_future())
        self.current = seq
        self.register(seq, self._progress.index == 0)
        try:
            return await running.ended
        finally:
            if not running.ended.done():  # cancelled: CANCEL, or the connection went away
                self.stop()

    def _params(self, hole: Hole, rule: Rule | None, budget: int) -> SamplingParams:
        params = SamplingParams(**{**hole.sampling, "max_tokens": budget}, then=self)
        if rule is not None:
            assert self._vocab is not None
            params.constraint = MaskConstraint(rule, self._vocab, mask_words(self.model.backend.vocab_size,
                                                                            self._vocab))
        return params

    def stop(self) -> None:
        """Cancel the hole running now; no other starts."""
        self.model.engine.cancel_continued(self, lambda: self.current)

    # --- on the engine thread (``Continuation``) --------------------------------------------

    def after(self, seq: Sequence) -> Sequence | None:
        """The next hole's sequence where this one ends and the engine thread can start it
        without waiting: its prompt within the hole's budget and the context, its first mask
        quick. Changes nothing until ``started``."""
        progress, vocab = self._progress, self._vocab
        if seq is not self.current or vocab is None:
            return None
        following = self._after(progress, [t for t in seq.generated if t != self.eos], vocab)
        if following is None:
            return None
        hole = self.template.holes[following.index]
        budget = hole.max_length - len(following.prompt)
        if budget <= 0:
            return None
        try:
            self.check_context(self.model, len(following.prompt))
        except RequestError:  # the event loop ends the stream with it
            return None
        following = self._bound(following, vocab)
        params = self._params(hole, following.rule, budget)
        if params.constraint is not None:
            try:
                with slow_masks_deferred():
                    params.constraint.prepare([])
            except MaskPending:
                return None
        self._next = _Next(Sequence(self.stream_id, list(following.prompt), params, self.sink), following)
        return self._next.seq

    def started(self, seq: Sequence) -> None:
        """With the engine's lock held, before the ended hole's events are delivered."""
        assert self._next is not None and self._next.seq is seq
        self._went_on.append(self._progress.index)
        self._progress, self.current, self._next = self._next.progress, seq, None

    # --- on the event loop -------------------------------------------------------------------

    def take(self, events: list[TokenEvent]) -> tuple[list[TokenEvent | dict[str, Any]], list[int]]:
        """This stream's events (in order): the entries to send now, each an event (its hole's
        index beside it; an error as it is) or, where the engine went on after a hole, that
        hole's last entry, ready; the last event of a hole the engine did not go on after is
        handed to ``_generate``."""
        hole = self._hole
        sent: list[TokenEvent | dict[str, Any]] = []
        holes: list[int] = []
        if hole is None:
            return sent, holes
        for event in events:
            if hole.ended.done():  # (events after the end: none are made)
                break
            if event.error is not None:
                sent.append(event)
                holes.append(hole.index)
                hole.ended.set_result(None)
                break
            if event.finish_reason is None:
                sent.append(event)
                holes.append(hole.index)
            elif self._went_on and self._went_on[0] == hole.index:
                self._went_on.popleft()
                sent.append(_hole_end(wire.token_entry(event, self.reasons), hole.index, False))
                holes.append(hole.index)
                self._hole = hole = _HoleTokens(hole.index + 1, hole.ended)
                continue
            if event.token != self.eos:
                hole.ids.append(event.token)
            if event.finish_reason is not None:
                hole.ended.set_result((hole.ids, wire.token_entry(event, self.reasons)))
        return sent, holes


def _hole_end(last: dict[str, Any], index: int, final: bool) -> dict[str, Any]:
    """A hole's last entry: its index, and its end as the hole's (``hole_finish``) or, the
    template's last, the stream's (``finish_reason``)."""
    last["hole"] = index
    reason = last.pop("finish_reason", None) or wire.LENGTH
    last["finish_reason" if final else "hole_finish"] = reason
    return last


class _HoleTokens:
    """The running hole's tokens so far, and the end of the holes the event loop waits for:
    (tokens, last entry), or None (an error)."""

    def __init__(self, index: int, ended: asyncio.Future[tuple[list[int], dict[str, Any]] | None]) -> None:
        self.index = index
        self.ids: list[int] = []
        self.ended = ended


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
