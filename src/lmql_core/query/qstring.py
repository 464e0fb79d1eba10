"""Prompt strings ("qstrings"): literal text, ``{expr}`` interpolations and ``[VAR]`` holes.

``[[`` and ``]]`` stand for literal brackets, ``{{`` and ``}}`` for literal braces, as in LMQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from lmql_core.query.errors import QuerySyntaxError

_HOLE = re.compile(r"\s*(?P<name>[A-Za-z_][A-Za-z_0-9]*)\s*(?::\s*(?P<type>.*?)\s*)?$", re.DOTALL)


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
            end = _closing_bracket(s, i)
            if end < 0:  # unbalanced inside: the first "]" ends it (the type's error says why)
                end = s.find("]", i)
            if end < 0:
                raise QuerySyntaxError(f"unclosed '[' in prompt string {s!r} "
                                       "(write '[[' for a literal bracket)")
            flush()
            segments.append(_hole(s[i + 1:end], s))
            i = end + 1
        elif c == "{" and interpolate:
            end = _closing_brace(s, i)
            flush()
            segments.append(Interpolation(s[i + 1:end]))
            i = end + 1
        else:
            text.append(c)
            i += 1
    flush()
    return segments


def _hole(inner: str, s: str) -> Hole:
    match = _HOLE.match(inner)
    if match is None:
        raise QuerySyntaxError(f"'[{inner}]' in prompt string {s!r} is not a variable: write [NAME] or "
                               "[NAME: type] (and '[[' for a literal bracket)")
    return Hole(match["name"], match["type"] or None)


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


def _closing_bracket(s: str, start: int) -> int:
    """The ``]`` that ends the hole opened at ``start`` (a type may hold brackets and strings:
    ``[A: one_of(['x', 'y'])]``), or -1."""
    for i, c, depth in outside_quotes(s, start + 1):
        if depth < 0:
            return i if c == "]" else -1
    return -1


def _closing_brace(s: str, start: int) -> int:
    for i, c, depth in outside_quotes(s, start):
        if depth == 0 and c in ")]}":
            if c != "}":
                break
            return i
    raise QuerySyntaxError(f"unclosed '{{' in prompt string {s!r} (write '{{{{' for a literal brace)")
