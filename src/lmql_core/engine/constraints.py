"""Grammars inside the batch: a per-sequence constraint the engine applies while it samples.

A request's regex, Lark-like grammar or JSON schema (``GrammarSpec``) compiles once per model
(``GrammarCompiler``, compiled grammars cached by hash, bounded) into a ``Constraint``: an
llguidance matcher that follows the sequence's tokens. ``mask_filler.MaskFiller`` fills the masks
of a step's constrained rows on llguidance's threads, without the interpreter's lock, while the
backend computes. After sampling, the grammars take their tokens (``MaskFiller.take_tokens``) and
``grammar_events`` appends the tokens each grammar then forces (fast-forward) without sampling.

llguidance is imported on first use only: ``import lmql`` and servers without constraints never load it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from lmql_core.engine.mask_filler import mask_threads
from lmql_core.engine.sequence import Finish, Sequence, TokenEvent
from lmql_core.errors import LMQLError

KINDS = ("regex", "grammar", "json_schema")
MAX_SOURCE_CHARS = 100_000  # a grammar's text (a schema's JSON) at most
CACHE_ENTRIES = 64  # compiled grammars kept per model, least recently used dropped first
CACHE_SOURCE_CHARS = 4_000_000  # and at most this much grammar text among them
# llguidance's own bounds (its defaults are 2-10x larger): what building the lexer and one mask may
# cost (~50k fuel a ms), and the lexer's states (1-2 kB each): a hostile regex ends in an error
# within tens of milliseconds instead of running for seconds or growing without bound
LEXER_FUEL = 100_000
STEP_FUEL = 100_000
LEXER_STATES = 50_000
NO_EXTENSION = ("NoExtension", "NoExtensionBias")  # llguidance's stop reasons: no byte can follow
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# llguidance's "slices" (docs/optimizations.md in its repository): sets of tokens whose mask bits are
# copied whole where the lexer allows every token of the set, instead of walking them in the token
# trie. Its default cuts JSON-string tokens at 10 and 30 characters, so a string with fewer than 10
# characters left before its maxLength (and one under 30) walks most of the vocabulary (0.2-0.5 ms a
# row at 50k tokens); finer cuts leave a short walk there: 64 rows of a JSON schema, 2.7 -> 2.2 ms of
# CPU a step (mask_costs.py --grammar). Masks are the same (a slice is only a shortcut).
_STRING_CHARS = r'[^"\\\x00-\x1F\x7F]'
MASK_SLICES = [r"[\x20\x0A\x0D\x09]+",
               *(f"{_STRING_CHARS}{{1,{n}}}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40)),
               f"{_STRING_CHARS}+"]


class GrammarError(LMQLError):
    """A grammar that cannot constrain generation: invalid, too costly, or matching nothing."""


@dataclass(frozen=True)
class GrammarSpec:
    """What a request asks for: ``kind`` (one of KINDS) and its text (a schema as JSON text)."""

    kind: str
    source: str

    @classmethod
    def of(cls, kind: str, value: Any) -> GrammarSpec:
        """Check a request's field: a regex or grammar is a string; a schema an object or its JSON."""
        if kind not in KINDS:
            raise GrammarError(f"unknown constraint kind '{kind}' (expected one of {', '.join(KINDS)})")
        if kind == "json_schema" and isinstance(value, (dict, bool)):
            value = json.dumps(value, sort_keys=True)
        if not isinstance(value, str):
            wanted = "a string or an object" if kind == "json_schema" else "a string"
            raise GrammarError(f"'{kind}' must be {wanted}, not {type(value).__name__}")
        if len(value) > MAX_SOURCE_CHARS:
            raise GrammarError(f"'{kind}' has {len(value)} characters; "
                               f"at most {MAX_SOURCE_CHARS} are accepted")
        if kind == "json_schema":
            try:
                json.loads(value)
            except ValueError as e:
                raise GrammarError(f"'json_schema' is not valid JSON: {e}") from None
        return cls(kind, value)

    def llguidance_text(self) -> str:
        from llguidance import LLMatcher

        if self.kind == "regex":
            return str(LLMatcher.grammar_from_regex(self.source))
        if self.kind == "grammar":
            return str(LLMatcher.grammar_from_lark(self.source))
        try:
            # compact JSON (a schema's own "x-guidance" options may allow whitespace): a model that
            # may put whitespace anywhere can spend its whole budget on it
            return str(LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_OPTIONS))  # type: ignore[arg-type]
        except ValueError as e:
            raise GrammarError(f"'json_schema' is not a schema: {e}") from None


class SequenceConstraint(Protocol):
    """What the engine asks of a sequence's constraint (``SamplingParams.constraint``): a grammar
    (``Constraint``) or a tree of LMQL's kinds (``mask_constraint.MaskConstraint``)."""

    mask_words: int  # int32 words of its mask (32 tokens each)
    follows_tokens: bool  # an llguidance matcher: filled, and takes tokens, through llguidance's executor
    # with fewer tokens generated, every step allows every token and the end (``allows_all_after``):
    # the engine follows no token of the sequence, nor fills its mask (a plain int: read every row)
    open_below: int

    def events_after(self, seq: Sequence, token: int, logprob: float, top: Mapping[int, float],
                     followed: Followed | None) -> tuple[list[TokenEvent], bool]:
        """A sampled token's events (and tokens it forces), and whether the sequence ends;
        ``followed``: what a grammar did with the token (``MaskFiller.take_tokens``), else None."""
        ...

    def failure(self) -> str:
        """The error of a row where no token was left to choose."""
        ...

    def needs_mask(self, generated: list[int]) -> bool:
        """Whether the step after ``generated`` (the sequence's tokens) bans any token: else it
        needs no row in the step's masks."""
        ...

    def allows_all_after(self, generated: int) -> bool:
        """Whether the mask after any ``generated`` tokens lets every token through, whatever they
        are (the engine may then sample that step before it reads the tokens before it)."""
        ...


@dataclass
class Followed:
    """What a grammar did with its row's sampled token, read from its matcher at once: whether
    it took the token, the tokens it then forces (taken too), and whether it is complete or
    failed. The step's events are made from it while the grammars' next masks are filled on
    llguidance's threads, which no matcher call may meet (``MaskFiller.take_tokens``)."""

    taken: bool
    forced: list[int]
    complete: bool = False
    error: str | None = None

    @property
    def goes_on(self) -> bool:
        """Whether the next step samples this row under the grammar's next mask."""
        return self.taken and not self.forced and not self.complete and self.error is None


class Constraint:
    """One sequence's grammar state. Used on the engine thread only (and by ``MaskFiller``'s
    threads while the engine thread waits for them)."""

    follows_tokens = True
    open_below = 0  # its state is the matcher's, which takes every token

    def __init__(self, matcher: Any, eos_token_id: int | None, mask_words: int, lexer: int = 0) -> None:
        self.matcher = matcher
        self.eos_token_id = eos_token_id
        self.mask_words = mask_words  # int32 words of its mask (32 tokens each)
        self.lexer = lexer  # the lexer it shares with other copies of its grammar (``GrammarCompiler``)
        # off: forced text is sampled token by token as any other (under a mask that allows only
        # its continuations), so the tokens are the model's greedy ones rather than the canonical
        # tokenization: what a client that masks each step itself would get
        self.fast_forward = True

    def forced(self) -> list[int]:
        """After a sampled token was taken (``MaskFiller.take_tokens``): the tokens the grammar
        now forces, taken too."""
        # the forced bytes first: none at most steps, and half the cost of the forced tokens (a
        # stopped matcher, an error's too, forces none)
        if not self.fast_forward or not self.matcher.compute_ff_bytes():
            return []
        forced = list(self.matcher.compute_ff_tokens())
        if forced and not self.matcher.consume_tokens(forced):
            return []
        return forced

    @property
    def error(self) -> str | None:
        return str(self.matcher.get_error()) or None if self.matcher.is_error() else None

    def follow(self, taken: bool) -> Followed:
        """After the matcher was handed its sampled token (it ``taken`` it or not)."""
        if not taken:
            return Followed(False, [], error=self.error or "the grammar refused the sampled token")
        forced = self.forced()
        if not self.matcher.is_stopped():  # (a running matcher has no error and is not complete)
            return Followed(True, forced)
        error = self.error
        return Followed(True, forced, complete=error is None, error=error)

    def events_after(self, seq: Sequence, token: int, logprob: float, top: Mapping[int, float],
                     followed: Followed | None) -> tuple[list[TokenEvent], bool]:
        assert followed is not None, "a grammar's row is followed when it takes its token"
        return grammar_events(seq, token, logprob, top, followed)

    def failure(self) -> str:
        return f"grammar error: {self.error or 'the grammar allows no token here'}"

    def allows_all_after(self, generated: int) -> bool:
        return False  # its state is the matcher's, which needs every token

    def needs_mask(self, generated: list[int]) -> bool:
        return True


@dataclass
class _Compiled:
    """A grammar's fresh matchers to copy, one per lexer group, and how many copies were made."""

    templates: list[Any]
    copies: int = 0


class GrammarCompiler:
    """Compiles grammars for one model's tokenizer. ``compile`` blocks (about a millisecond, a
    hostile grammar at most its llguidance limits): call it off the event loop.

    A copy of a compiled matcher (llguidance's ``deep_copy``) shares its lexer with the original,
    behind one lock: the lexer's states, built as masks need them, then serve every copy, but
    the copies' masks cannot be computed at the same time. So a grammar many sequences use is
    compiled up to ``lexer_groups`` times (the mask threads), its copies spread over them in
    turn, and ``MaskFiller`` hands each mask thread the rows of one group."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_id: int | None,
                 lexer_groups: int | None = None) -> None:
        self._tokenizer_source = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.lexer_groups = lexer_groups or mask_threads()
        self._ll_tokenizer: Any = None
        self._cache: OrderedDict[GrammarSpec, _Compiled] = OrderedDict()
        self._lock = threading.RLock()

    def compile(self, spec: GrammarSpec) -> Constraint:
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is not None:
                self._cache.move_to_end(spec)
                group, compiled.copies = compiled.copies % self.lexer_groups, compiled.copies + 1
                if group < len(compiled.templates):
                    return self._constraint(compiled.templates[group])
        template = self._build(spec)
        with self._lock:
            if compiled is None:
                compiled = self._cache[spec] = _Compiled([template], 1)
            elif len(compiled.templates) < self.lexer_groups:
                compiled.templates.append(template)
            while len(self._cache) > CACHE_ENTRIES or (
                    len(self._cache) > 1 and sum(len(s.source) for s in self._cache) > CACHE_SOURCE_CHARS):
                self._cache.popitem(last=False)
        return self._constraint(template)

    def _constraint(self, template: Any) -> Constraint:
        words = (self.ll_tokenizer().vocab_size + 31) // 32
        return Constraint(template.deep_copy(), self.eos_token_id, words, lexer=id(template))

    def cached(self) -> int:
        return len(self._cache)

    def _build(self, spec: GrammarSpec) -> Any:
        import llguidance

        limits = llguidance.LLParserLimits(initial_lexer_fuel=LEXER_FUEL, step_lexer_fuel=STEP_FUEL,
                                           max_lexer_states=LEXER_STATES, verbose_errors=False)
        matcher = llguidance.LLMatcher(self.ll_tokenizer(), spec.llguidance_text(), log_level=0,
                                       limits=limits)
        if not matcher.is_error():
            matcher.compute_bitmask()  # the first mask: a regex too costly to build fails here
        # before any token, a grammar that cannot go on matches nothing (not even the empty text)
        reason = _first_line(matcher.get_error()) if matcher.is_error() else str(matcher.stop_reason())
        if reason in NO_EXTENSION and not matcher.is_accepting():
            raise GrammarError(f"the {spec.kind} matches nothing")
        if matcher.is_error():
            raise GrammarError(f"invalid {spec.kind}: {_first_line(matcher.get_error())}")
        return matcher

    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                try:
                    self._ll_tokenizer = ll_tokenizer_of(self._tokenizer_source, self.vocab_size,
                                                         self.eos_token_id)
                except GrammarError:
                    raise
                except Exception as e:  # llguidance refusing the tokenizer: the request's error
                    raise GrammarError(f"this model's tokenizer cannot compile grammars: {e}") from None
            return self._ll_tokenizer


def _first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def ll_tokenizer_of(tokenizer: Any, vocab_size: int, eos_token_id: int | None) -> Any:
    """llguidance's view of one of our tokenizers (``tokenizer.JsonTokenizer``/``BytesTokenizer``)."""
    import llguidance

    if eos_token_id is None:
        raise GrammarError("constraints need a model with an end-of-sequence token")
    spec = tokenizer.spec() if hasattr(tokenizer, "spec") else None
    if spec and "tokenizer_json" in spec:
        size = max(vocab_size, tokenizer.vocab_size)
        return llguidance.LLTokenizer(spec["tokenizer_json"], n_vocab=size, eos_token=eos_token_id,
                                      slices=MASK_SLICES)
    if spec and spec.get("kind") == "bytes":
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens(vocab_size, eos_token_id)),
                                      slices=MASK_SLICES)
    raise GrammarError("this model's tokenizer cannot compile grammars (it needs a tokenizer.json)")


class _ByteTokens:
    """The random backend's tokens as llguidance reads a tokenizer: ids 0-255 are bytes."""

    def __init__(self, vocab_size: int, eos_token_id: int) -> None:
        self.eos_token_id, self.bos_token_id = eos_token_id, None
        self.tokens = [bytes([i]) for i in range(256)] + [b"<|%d|>" % i for i in range(256, vocab_size)]
        self.special_token_ids = list(range(256, vocab_size))

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


FORCED_TOP: Mapping[int, float] = MappingProxyType({})  # a forced token's candidates: none beside it


def grammar_events(seq: Sequence, token: int, logprob: float, top: Mapping[int, float],
                   followed: Followed) -> tuple[list[TokenEvent], bool]:
    """``token``, sampled for ``seq`` under its constraint (already in ``seq.generated``; what its
    grammar did with it: ``followed``), as events: itself, then the tokens the grammar forces
    after it (appended to ``seq.generated`` too; log-prob 0: under the grammar they are certain).
    Returns them and whether ``seq`` ends: its grammar is complete (finish EOS, without an EOS
    token), ``max_generated`` is reached, or the grammar failed (an error). No matcher call."""
    if followed.error is not None:
        return [TokenEvent(seq.stream_id, error=f"grammar error: {followed.error}")], True
    forced = followed.forced[: seq.max_generated - len(seq.generated)]
    seq.generated.extend(forced)
    tokens = [(token, logprob, top)] + [(t, 0.0, FORCED_TOP) for t in forced]
    events = [TokenEvent(seq.stream_id, t, lp, None, tp) for t, lp, tp in tokens]
    last = events[-1]
    if followed.complete:
        last.finish_reason = Finish.EOS
    elif len(seq.generated) >= seq.max_generated:
        last.finish_reason = Finish.LENGTH
    return events, last.finish_reason is not None
