"""Prompt strings ("qstrings"): literal text, ``{expr}`` interpolations and ``[VAR]`` holes.

``[[`` and ``]]`` stand for literal brackets, ``{{`` and ``}}`` for literal braces, as in LMQL.
A hole may carry decorators (``[@fn VAR]``, ``[@a @b(1) VAR]``); ``{:ROLE}`` is a role tag (``chat``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lmql_core.query.chat import tag
from lmql_core.query.errors import QuerySyntaxError

_HOLE = re.compile(r"\s*(?P<name>[A-Za-z_][A-Za-z_0-9]*)\s*(?::\s*(?P<type>.*?)\s*)?$", re.DOTALL)
_DECORATOR = re.compile(r"@\s*(?P<name>[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Interpolation:
    expr: str  # Python source, with an optional ``!r``/``:spec`` tail as in f-strings


@dataclass(frozen=True)
class Hole:
    name: str
    type_expr: str | None = None
    decorators: tuple[Any, ...] = ()  # their Python sources once parsed; the objects at run time


Segment = Text | Interpolation | Hole


def parse_qstring(s: str, interpolate: bool = True) -> list[Segment]:
    """The segments of one prompt string, adjacent text merged."""
    segments: list[Segment] = []
    text: list[str] = []
    i = 0

    def flush() -> None:
        if text:
            segments.append(Text("".join(text)))
            text.clear()

    while i < len(s):
        c, pair = s[i], s[i:i + 2]
        if pair in ("[[", "]]") or (interpolate and pair in ("{{", "}}")):
            text.append(c)
            i += 2
        elif c == "[":
            end = _hole_end(s, i)
            if end < 0:
                raise QuerySyntaxError(f"unclosed '[' in prompt string {s!r} "
                                       "(write '[[' for a literal bracket)")
            flush()
            segments.append(_hole(s[i + 1:end], s))
            i = end + 1
        elif c == "{" and interpolate:
            end = _closing_brace(s, i)
            if s[i + 1:i + 2] == ":":
                text.append(tag(s[i + 2:end]))  # {:user}: a role tag, as LMQL's lmql_runtime.tag
            else:
                flush()
                segments.append(Interpolation(s[i + 1:end]))
            i = end + 1
        else:
            text.append(c)
            i += 1
    flush()
    return segments


def _hole(inner: str, s: str) -> Hole:
    decorators, rest = _decorators(inner, s)
    match = _HOLE.match(rest)
    if match is None:
        raise QuerySyntaxError(f"'[{inner}]' in prompt string {s!r} is not a variable: write [NAME], "
                               "[NAME: type] or [@decorator NAME] (and '[[' for a literal bracket)")
    return Hole(match["name"], match["type"] or None, decorators)


def _decorators(inner: str, s: str) -> tuple[tuple[str, ...], str]:
    """``@name``, ``@a.b`` and ``@f(args)`` prefixes of a hole: their sources and the rest."""
    found: list[str] = []
    rest = inner.lstrip()
    while rest.startswith("@"):
        match = _DECORATOR.match(rest)
        if match is None:
            raise QuerySyntaxError(f"'[{inner}]' in prompt string {s!r}: '@' must be followed by a "
                                   "decorator's name, as in [@fn NAME]")
        expr, rest = re.sub(r"\s+", "", match["name"]), rest[match.end():]
        if rest.startswith("("):
            close = _closing(rest, 0, "(", ")")
            if close is None:
                raise QuerySyntaxError(f"unclosed '(' in decorator @{expr} of '[{inner}]'")
            expr, rest = expr + rest[:close + 1], rest[close + 1:].lstrip()
        found.append(expr)
    return tuple(found), rest


def _hole_end(s: str, start: int) -> int:
    """The ``]`` closing the hole at ``start``: a type or a decorator's arguments may hold brackets
    and strings (``[A: one_of(['x', 'y'])]``, ``[@f([1]) X]``). Unbalanced inside, a decorated hole
    is unclosed; another ends at the first ``]`` (its type's error then says why)."""
    fallback = -1 if s[start + 1:].lstrip().startswith("@") else s.find("]", start)
    for i, c, depth in outside_quotes(s, start + 1):
        if depth < 0:
            return i if c == "]" else fallback
    return fallback


def _closing(s: str, start: int, opening: str, closing: str) -> int | None:
    """The index of the ``closing`` that balances the ``opening`` at ``start``, outside quotes."""
    for i, c, depth in outside_quotes(s, start):
        if depth == 0 and c == closing:
            return i
        if depth <= 0 and c in ")]}":
            return None
    return None


def outside_quotes(s: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """``(index, character, bracket depth after it)`` for each character of ``s`` from ``start``
    that is not inside a quoted string (what Python expressions in ``{...}`` need)."""
    depth, quote = 0, None
    for i in range(start, len(s)):
        c = s[i]
        if quote:
            quote = None if c == quote else quote
            continue
        if c in "'\"":
            quote = c
            continue
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        yield i, c, depth


def _closing_brace(s: str, start: int) -> int:
    for i, c, depth in outside_quotes(s, start):
        if depth == 0 and c in ")]}":
            if c != "}":
                break
            return i
    raise QuerySyntaxError(f"unclosed '{{' in prompt string {s!r} (write '{{{{' for a literal brace)")
