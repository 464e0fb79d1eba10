"""Errors of LMQL programs: one line that names the query's line, never our internals."""

from __future__ import annotations

from lmql_core.errors import LMQLError


class QueryError(LMQLError):
    """A problem with a query, reported with the query line it comes from (when known)."""

    def __init__(self, message: str, line: int | None = None, source_line: str | None = None) -> None:
        self.message, self.line, self.source_line = message, line, source_line
        super().__init__(self._text())

    def _text(self) -> str:
        if self.line is None:
            return self.message
        where = f"line {self.line}" + (f": {self.source_line.strip()}" if self.source_line else "")
        return f"{self.message} (query {where})"

    def at(self, line: int | None, source_line: str | None = None) -> QueryError:
        """This error, placed at ``line`` unless it already knows its line."""
        if self.line is None and line is not None:
            self.line, self.source_line = line, source_line
            self.args = (self._text(),)
        return self


def placed(error: BaseException, line: int | None, source_line: str | None) -> BaseException:
    """An exception the query's own Python raised, kept as it is (LMQL lets it through, so
    ``except AssertionError`` around a query works) with a note naming the query line; ``lmql
    run`` shows it as one error line."""
    where = f"query line {line}" + (f": {source_line.strip()}" if source_line else "")
    error.lmql_query_line = f"raised at {where}"  # type: ignore[attr-defined]
    error.add_note(f"({error.lmql_query_line})")  # type: ignore[attr-defined]
    return error


class NotAnInteger(QueryError, ValueError):
    """INT(X) ended without a digit (a ValueError, as LMQL's int() of the value raises)."""


class QuerySyntaxError(QueryError):
    pass


class NoModelError(QueryError):
    """The query names no model and none was passed or set (the `lmql run` command words its own
    remedy: `--model`)."""


class UnsupportedConstraint(QueryError):
    why = ""  # the reason alone, without the constraint


class UnknownVariable(QuerySyntaxError):
    """A constraint on a name that is not a prompt variable of the query (reported when it is called)."""
