"""The constraint kinds, evaluated: a ``where`` clause as it stands while one variable is generated.

Each kind owns its behaviour: ``mask`` (which next tokens keep it satisfiable, and whether the
variable may end now, LMQL 0.7's token-level rules, so both runtimes choose the same tokens),
``holds`` (on a finished value), ``reached``/``trim`` (STOPS_AT/STOPS_BEFORE end the variable and
cut it), ``token_budget`` (``len(TOKENS(V)) < n``), ``postprocess`` (INT makes an int) and
``grammar`` (what the server's grammar extension can follow alone). Arguments are plain values
(the query runtime evaluated them); a constraint on another variable is a ``Truth``. The JSON form
is in ``serial.py``. No import of the query runtime: the engine builds these from requests.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmql_core.constraints.mask import ANY, Allowed, ConstraintError, NoDigits, Value
from lmql_core.constraints.regex_masks import TextStates, regex_mask
from lmql_core.constraints.tree import And, Holds, Junction, Or, Rule, Truth
from lmql_core.constraints.vocabulary import Vocabulary

__all__ = ["ANY", "KINDS", "Allowed", "And", "ConstraintError", "Contains", "Count", "IsInt", "NoDigits",
           "Holds", "Junction", "NoneOf", "OneOf", "Or", "Regex", "Rule", "StopsAt", "Truth", "Value"]

COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
    "!=": operator.ne,
}
ASCII_DIGITS = frozenset("0123456789")  # INT's digits, as LMQL's: not every Unicode digit


@dataclass
class StopsAt(Rule):
    """STOPS_AT/STOPS_BEFORE: never masks; ends the variable once the phrase appears, and trims it."""

    phrase: str
    before: bool = False
    kind: ClassVar[str] = "stops_at"

    def __post_init__(self) -> None:
        if not isinstance(self.phrase, str) or not self.phrase:
            raise ConstraintError(f"the stopping phrase must be a non-empty string, not {self.phrase!r}")

    def ends(self, value: Value) -> bool:
        """LMQL's rule: the phrase ends the value, or a match overlaps what the last token added."""
        index = value.text.rfind(self.phrase)
        return value.text.endswith(self.phrase) or (index >= 0 and index >= len(value.text) - len(value.diff))

    def cut(self, value: Value) -> str | None:
        """The value cut at the first match that reaches into the last token's text (None: no match)."""
        text, phrase, start_of_diff = value.text, self.phrase, len(value.text) - len(value.diff)
        index = text.rfind(phrase)
        earlier = text.rfind(phrase, 0, index)
        while earlier != -1 and earlier >= start_of_diff:
            index, earlier = earlier, text.rfind(phrase, 0, earlier)
        if index == -1 or index + len(phrase) <= start_of_diff:
            return None
        return text[:index] if self.before else text[:index + len(phrase)]

    def fields(self) -> dict[str, Any]:
        return {"phrase": self.phrase, "before": self.before}


@dataclass
class Count(Rule):
    """``len(TOKENS(V)) op n`` (``tokens``) or ``len(V) op n`` (characters)."""

    op: str
    limit: int | float
    tokens: bool = True
    kind: ClassVar[str] = "count"

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise ConstraintError(f"unknown comparison {self.op!r} (one of {', '.join(COMPARISONS)})")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int | float | np.integer | np.floating):
            raise ConstraintError(f"a length is compared with a number, not {self.limit!r}")
        self.limit = int(self.limit) if isinstance(self.limit, int | np.integer) else float(self.limit)

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        compare = COMPARISONS[self.op]
        if self.tokens:
            now, grow = len(value.ids), len(value.ids) + 1
            tokens = None if self._may_grow_into(grow) else vocab.nothing()
            return Allowed(tokens, compare(now, self.limit))
        now = len(value.text)
        within = None
        if self.op in ("<", "<=", "=="):  # the tokens that keep now + len(token) <= (<) limit
            most = _most_chars(self.limit - now, strict=self.op == "<")
            if most < vocab.longest:  # (else every token fits: None, no mask to look up)
                within = vocab.at_most_chars(most)
        return Allowed(within, compare(now, self.limit))

    def allows_all_after(self, generated: int) -> bool:
        # the mask reads the tokens' count alone: any token where it may grow, the end where it holds
        return self.tokens and self._may_grow_into(generated + 1) and \
            bool(COMPARISONS[self.op](generated, self.limit))

    def _may_grow_into(self, size: int) -> bool:
        if self.op == "==":
            return bool(size <= self.limit)
        if self.op in ("<", "<="):
            return bool(COMPARISONS[self.op](size, self.limit))
        return True

    def holds(self, text: str, vocab: Vocabulary, tokens: int | None = None) -> bool:
        # LMQL 0.7 counts the tokens a value was generated as, not its text re-tokenized
        count = len(text) if not self.tokens else tokens if tokens is not None else len(vocab.encode(text))
        return COMPARISONS[self.op](count, self.limit)

    def budget(self, generated: int) -> int | None:
        if not self.tokens or not isinstance(self.limit, int):
            return None
        return max(1, self.limit - generated)

    def fields(self) -> dict[str, Any]:
        return {"op": self.op, "limit": self.limit, "tokens": self.tokens}


def _most_chars(room: int | float, strict: bool) -> int:
    """The largest whole n with n < room (``strict``) or n <= room; -1 where there is none."""
    if math.isnan(room) or room == -math.inf:
        return -1
    if room == math.inf:
        return sys.maxsize
    most = math.ceil(room) - 1 if strict else math.floor(room)
    return max(-1, int(most))


def _string_list(options: Any) -> list[str]:
    if isinstance(options, str) or not isinstance(options, list | tuple | set | frozenset) or \
            not all(isinstance(o, str) for o in options):
        raise ConstraintError("the options must be a list of strings")
    return list(options)


@dataclass
class OneOf(Rule):
    """``V in [options]`` (and ``V == s``): as LMQL, only the first token of each remaining
    option's own tokenization may come next, and the variable may end once it equals an option."""

    options: list[str]
    kind: ClassVar[str] = "one_of"

    def __post_init__(self) -> None:
        self.options = _string_list(self.options)

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        rests = [o[len(value.text):] for o in self.options if o.startswith(value.text)]
        return Allowed(vocab.first_tokens([r for r in rests if r]), "" in rests)

    def holds(self, text: str, vocab: Vocabulary, tokens: int | None = None) -> bool:
        return text in self.options

    def fields(self) -> dict[str, Any]:
        return {"options": self.options}

    def grammar(self, vocab: Vocabulary) -> tuple[str, str] | None:
        from lmql_core.constraints.grammar import choice_grammar

        if not all(o.isascii() for o in self.options):
            return None
        grammar = choice_grammar(self.options, vocab)
        return None if grammar is None else ("grammar", grammar)


@dataclass
class NoneOf(Rule):
    """``not V in [options]``: the variable may not end on one of them."""

    options: list[str]
    kind: ClassVar[str] = "none_of"

    def __post_init__(self) -> None:
        self.options = _string_list(self.options)

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        return Allowed(None, value.text not in self.options)

    def holds(self, text: str, vocab: Vocabulary, tokens: int | None = None) -> bool:
        return text not in self.options

    def fields(self) -> dict[str, Any]:
        return {"options": self.options}


@dataclass
class Contains(Rule):
    """``s in V`` (``negate``: ``not s in V``). As LMQL's InOpStrInStr: ``s in V`` masks no token
    and lets V end once it holds s; ``not s in V`` masks every token whose text holds the rest
    of s that V's end has not begun yet (all of s, or what follows the longest prefix of s that
    V ends with), and lets V end."""

    phrase: str
    negate: bool = False
    kind: ClassVar[str] = "contains"

    def __post_init__(self) -> None:
        if not isinstance(self.phrase, str):
            raise ConstraintError(f"only a string can be looked for in a variable, not {self.phrase!r}")

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        phrase = self.phrase
        if not self.negate:
            return Allowed(None, phrase in value.text)
        if phrase in value.text:
            return Allowed(vocab.nothing(), True)  # LMQL's mask when nothing is allowed: EOS alone
        overlap = max((i for i in range(1, len(phrase)) if value.text.endswith(phrase[:i])), default=0)
        return Allowed(vocab.not_containing(phrase[overlap:]), True)

    def holds(self, text: str, vocab: Vocabulary, tokens: int | None = None) -> bool:
        return (self.phrase in text) != self.negate

    def fields(self) -> dict[str, Any]:
        return {"phrase": self.phrase, "negate": self.negate}


@dataclass
class IsInt(Rule):
    """``INT(V)``: digits (a leading space allowed), ended by any other token, which the
    postprocessing drops; LMQL's token classes."""

    kind: ClassVar[str] = "int"

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        text = value.text
        if text == "":
            return Allowed(vocab.matching(r"[ 1-9][0-9]*$"), False)
        if text.strip() == "":
            return Allowed(vocab.matching(r"[1-9][0-9]*$"), False)
        if all(c.strip() in ",0123456789" for c in text):
            return ANY
        return Allowed(vocab.nothing(), True)

    def holds(self, text: str, vocab: Vocabulary | None, tokens: int | None = None) -> bool:
        digits = text.removeprefix(" ")  # as LMQL 0.7: one leading space, then 0-9 only
        return text != "" and all(c in ASCII_DIGITS for c in digits)

    def value_of(self, text: str) -> tuple[str, Any] | None:
        digits = "".join(c for c in text if c in ASCII_DIGITS)  # as LMQL: 0-9, not every Unicode digit
        if not digits:
            raise NoDigits(f"ended without a digit: {text!r}")
        return str(int(digits)), int(digits)


@dataclass
class Regex(Rule):
    """``REGEX(V, pattern)``: tokens that keep the value a prefix of a match; ends on a full match."""

    pattern: str
    kind: ClassVar[str] = "regex"

    def __post_init__(self) -> None:
        import regex

        if not isinstance(self.pattern, str):
            raise ConstraintError(f"a regular expression is a string, not {self.pattern!r}")
        try:
            self._compiled = regex.compile(self.pattern)
        except regex.error as e:
            raise ConstraintError(f"invalid regular expression {self.pattern!r}: {e}") from None
        self._states = TextStates(self.pattern)

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        """Each token t where ``fullmatch(text + t, partial=True)`` matches (EOS never), and the
        end on a full match; ``regex_mask`` computes it fast (the same tokens)."""
        tokens, full = regex_mask(self._compiled, value.text, vocab, self._states)
        return Allowed(tokens, full)

    def holds(self, text: str, vocab: Vocabulary, tokens: int | None = None) -> bool:
        return self._compiled.fullmatch(text) is not None

    def fields(self) -> dict[str, Any]:
        return {"pattern": self.pattern}

    # no grammar(): llguidance's regex masks allow only the canonical tokens of text the regex
    # forces (after "M" in "(Monday|Tuesday)", lmql-tiny's "ond" but not "o" or "on"), where
    # LMQL's allow every token that keeps a partial match, so greedy choices would differ; a
    # REGEX goes to the server in a template (``MaskConstraint``: this very mask) instead


KINDS: dict[str, type[Rule]] = {k.kind: k for k in (Truth, And, Or, StopsAt, Count, OneOf, NoneOf, Contains,
                                                     IsInt, Regex, Holds)}
