"""LMQL source to its parts: decoder clause, prompt program, ``from``, ``where``, ``distribution``.

A query reads ``[PROLOGUE] [DECODER] BODY [from MODEL] [where CONDITION] [distribution VAR in
VALUES]``, on one line or several; the body is Python whose top-level strings are prompts. As in
LMQL, Python statements before the decoder keyword are a prologue (run once, as module code),
and clause keywords are case-insensitive (``FROM``, ``WHERE``); decoder keywords are lower case.
Clause keywords count only at the top level of a line that starts in column 0 (``from x import
y`` is Python); ``where`` after a prompt string with more body below it constrains that
statement alone. A backslash continuation before a clause keyword belongs to no clause.
"""

from __future__ import annotations

import io
import textwrap
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field

from lmql_core.query.errors import QuerySyntaxError

DECODERS = ("argmax", "sample", "beam", "beam_var", "var", "beam_sample", "best_k")
UNSUPPORTED_DECODERS = ("sample_var",)
CLAUSES = ("from", "where", "distribution")
Offset = Callable[[tuple[int, int]], int]  # (row, column) to a position in the source
WHERE_MARK = "__lmql_where__"  # a statement-level where, rewritten as ("prompt", WHERE_MARK, (cond))


@dataclass
class Clause:
    text: str
    line: int  # 1-based line of the clause's first character in the query source


@dataclass
class ParsedQuery:
    source: str
    body: Clause
    prologue: Clause | None = None  # Python before the decoder keyword
    decoder: str | None = None
    decoder_args: Clause | None = None
    clauses: dict[str, Clause] = field(default_factory=dict)

    def source_line(self, line: int | None) -> str | None:
        lines = self.source.splitlines()
        return lines[line - 1] if line is not None and 0 < line <= len(lines) else None


@dataclass
class _Line:
    tokens: list[tokenize.TokenInfo]

    @property
    def indent(self) -> int:
        return self.tokens[0].start[1]


def parse_query(source: str) -> ParsedQuery:
    """Split LMQL source into its parts (line numbers kept for error messages)."""
    source = _strip_marker(_dedent(source))
    offsets = _line_offsets(source)

    def at(pos: tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    lines = _logical_lines(source)
    if not lines:
        raise QuerySyntaxError("the query is empty")
    query = ParsedQuery(source, Clause("", 1))
    decoder_line = _decoder_line(lines)
    if decoder_line:
        query.prologue = Clause(source[:at((lines[decoder_line].tokens[0].start[0], 0))], 1)
    tokens = [t for line in lines[decoder_line:] for t in line.tokens]
    start = _decoder_clause(query, tokens, at, source)
    keywords = _clause_keywords(lines, start)
    body_end = at(keywords[0].start) if keywords else len(source)
    body_start = at(start.start) if start is not None else len(source)
    edits = _statement_wheres(lines, start, keywords, at)
    query.body = Clause(_body_text(source, body_start, body_end, edits),
                        start.start[0] if start is not None else 1)
    for i, keyword in enumerate(keywords):
        end = at(keywords[i + 1].start) if i + 1 < len(keywords) else len(source)
        name = keyword.string.lower()
        if name in query.clauses:
            raise QuerySyntaxError(f"more than one '{name}' clause").at(keyword.start[0], keyword.line)
        query.clauses[name] = Clause(_without_continuation(source[at(keyword.end):end]).strip(),
                                     keyword.start[0])
    return query


def _dedent(source: str) -> str:
    """Dedented; a first line right after the opening quotes counts apart, as in docstrings."""
    head, sep, rest = source.partition("\n")
    if head.strip() and rest.strip():
        return head.strip() + sep + textwrap.dedent(rest)
    return textwrap.dedent(source)


def _strip_marker(source: str) -> str:
    """The docstring form starts with a line ``lmql``: blank it (keeping line numbers)."""
    head, sep, rest = source.partition("\n")
    return ("" + sep + rest) if head.strip() == "lmql" else source


def _line_offsets(source: str) -> list[int]:
    offsets, total = [], 0
    for line in source.splitlines(keepends=True):
        offsets.append(total)
        total += len(line)
    return offsets + [total]


def _logical_lines(source: str) -> list[_Line]:
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
            tokenize.ENDMARKER}
    lines: list[_Line] = []
    current: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NEWLINE:
                if current:
                    lines.append(_Line(current))
                current = []
            elif token.type not in skip:
                current.append(token)
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        line = getattr(e, "lineno", None) or (e.args[1][0] if len(e.args) > 1 else None)
        raise QuerySyntaxError(f"cannot read the query: {e.args[0]}").at(line) from None
    if current:
        lines.append(_Line(current))
    return lines


def _decoder_line(lines: list[_Line]) -> int:
    """The index of the line that starts with the decoder keyword when Python statements come
    before it (LMQL's prologue); 0 otherwise. A ``where`` before any decoder ends the search."""
    for n, line in enumerate(lines):
        first = line.tokens[0]
        named = first.type == tokenize.NAME and first.string.lower() in DECODERS + UNSUPPORTED_DECODERS
        if line.indent == 0 and named:
            follower = line.tokens[1] if len(line.tokens) > 1 else None
            if follower is None or follower.type == tokenize.STRING or (
                    follower.string == "(" and follower.start == first.end):
                return n
        if any(t.type == tokenize.NAME and t.string.lower() in CLAUSES[1:] for t in line.tokens):
            return 0  # where/distribution: LMQL reads no decoder after them
    return 0


def _decoder_clause(query: ParsedQuery, tokens: list[tokenize.TokenInfo], at: Offset,
                    source: str) -> tokenize.TokenInfo | None:
    """Read a leading decoder (``argmax``, ``sample(n=2)``); return the body's first token."""
    first = tokens[0]
    if first.type != tokenize.NAME or len(tokens) > 1 and tokens[1].string in ("=", ".", ","):
        return first
    if first.string.lower() in DECODERS + UNSUPPORTED_DECODERS and first.string != first.string.lower() and (
            len(tokens) == 1 or tokens[1].type == tokenize.STRING or tokens[1].string == "("):
        lower = first.string.lower()
        raise QuerySyntaxError(f"decoder keywords are lower case, as in LMQL: write '{lower}', "
                               f"not '{first.string}'").at(first.start[0], first.line)
    if first.string in UNSUPPORTED_DECODERS:
        raise QuerySyntaxError(f"the decoder '{first.string}' is not supported; use one of "
                               f"{', '.join(DECODERS)}").at(first.start[0], first.line)
    if first.string not in DECODERS:
        return first
    query.decoder = first.string
    i = 1
    if i < len(tokens) and tokens[i].string == "(" and tokens[i].start == first.end:
        depth, j = 0, i
        while j < len(tokens):
            depth += {"(": 1, ")": -1}.get(tokens[j].string, 0)
            if depth == 0:
                break
            j += 1
        if j == len(tokens):
            raise QuerySyntaxError(f"unclosed '(' after '{first.string}'").at(first.start[0], first.line)
        query.decoder_args = Clause(source[at(tokens[i].end):at(tokens[j].start)], tokens[i].start[0])
        i = j + 1
    return tokens[i] if i < len(tokens) else None


def _clause_keywords(lines: list[_Line], start: tokenize.TokenInfo | None) -> list[tokenize.TokenInfo]:
    if start is None:
        return []
    found: list[tokenize.TokenInfo] = []
    for n, line in enumerate(lines):
        if line.indent != 0 or line.tokens[-1].end < start.start:
            continue
        depth, statement_where = 0, False
        for k, token in enumerate(line.tokens):
            if token.start < start.start:
                continue
            if token.type == tokenize.OP:
                depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(token.string, 0)
            keyword = token.string.lower()
            if depth or token.type != tokenize.NAME or keyword not in CLAUSES:
                continue
            rest = line.tokens[k:]
            if keyword == "from" and any(t.string == "import" for t in rest):
                continue
            if keyword == "where" and k != 0 and not found and (
                    _is_string(line.tokens[k - 1]) or not _only_clauses_after(lines, n)):
                statement_where = True  # as in LMQL, a where right after a prompt string is its own
                continue
            if keyword == "distribution" and k != 0 and not found and not statement_where:
                continue
            found.append(token)
    return found


def _is_string(token: tokenize.TokenInfo) -> bool:
    return token.type == tokenize.STRING or token.type == getattr(tokenize, "FSTRING_END", None)


def _only_clauses_after(lines: list[_Line], n: int) -> bool:
    """Whether the lines after line ``n`` hold only clauses (and their indented continuations)."""
    rest = lines[n + 1:]
    return not rest or (rest[0].indent == 0 and rest[0].tokens[0].string.lower() in CLAUSES)


def _statement_wheres(lines: list[_Line], start: tokenize.TokenInfo | None,
                      keywords: list[tokenize.TokenInfo], at: Offset) -> list[tuple[int, int, str]]:
    """Edits (offset, length replaced, text) that turn ``"p" where c`` into ``("p", MARK, (c))``."""
    edits: list[tuple[int, int, str]] = []
    first_clause = keywords[0].start if keywords else None
    for line in lines:
        depth = 0
        for k, token in enumerate(line.tokens):
            if start is None or token.start < start.start or (first_clause and token.start >= first_clause):
                continue
            if token.type == tokenize.OP:
                depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(token.string, 0)
            if depth or token.string.lower() != "where" or k == 0:
                continue
            head = line.tokens[0] if line.tokens[0].start >= start.start else start
            last = line.tokens[-1]
            if first_clause and last.end > first_clause:
                last = max((t for t in line.tokens if t.end <= first_clause), key=lambda t: t.end)
            edits += [(at(head.start), 0, "("), (at(token.start), 5, f", {WHERE_MARK}, ("),
                      (at(last.end), 0, "))")]
            break
    return edits


def _without_continuation(text: str) -> str:
    """``text`` without trailing space and the backslash that continued it into the next clause."""
    text = text.rstrip()
    while text.endswith("\\"):
        text = text[:-1].rstrip()
    return text


def _body_text(source: str, start: int, end: int, edits: list[tuple[int, int, str]]) -> str:
    text = source
    for offset, length, replacement in sorted(edits, reverse=True):
        text = text[:offset] + replacement + text[offset + length:]
        if offset <= end:
            end += len(replacement) - length
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].strip():  # the body starts after the decoder on its line
        head, sep, rest = text[start:end].partition("\n")
        return _without_continuation(head.strip() + sep + textwrap.dedent(rest))
    return _without_continuation(textwrap.dedent(text[line_start:end]))
