"""The query entry points: ``@lmql.query``, ``lmql.query(source)``, ``lmql.run``, ``lmql.F``."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import inspect
import sys
import textwrap
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lmql_core.lmtp.client.loop import run_async
from lmql_core.lmtp.client.loop import run_sync as _block
from lmql_core.query.errors import QueryError, QuerySyntaxError
from lmql_core.query.parser import Clause, ParsedQuery, parse_query
from lmql_core.query.program import CompiledQuery

SOURCE_TRACE_NAME = "<function query>"  # LMQL's tracer name for a query compiled from a string


class QueryFunction:
    """A compiled query, callable like the function it came from (sync or async)."""

    bound_args: tuple[Any, ...] = ()

    def __init__(self, compiled: CompiledQuery, is_async: bool) -> None:
        self.compiled, self.is_async = compiled, is_async
        self.__name__ = compiled.name
        self.model: Any = None  # force_model's: wins over every other choice, as in LMQL
        self.output_writer: Any = None  # used when a call names none

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.model is not None:
            kwargs["model"] = self.model
        if self.output_writer is not None:
            kwargs.setdefault("output_writer", self.output_writer)
        if not self.is_async:
            _refuse_in_async_context()
        run = self.compiled.start(args, kwargs)
        if self.is_async:
            return run_async(run)
        return _block(run)

    async def run_in_query(self, *args: Any, **kwargs: Any) -> Any:
        """Called from another query's body (on the client loop): awaited, sync or not."""
        return await self.compiled.start(args, kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """A query method: ``self`` bound as its first input (a query from source, ``lmql.F``
        or ``lmql.query("...")``, has no parameters to bind it to)."""
        if instance is None or self.compiled.params is None:
            return self
        return BoundQuery(self, instance)

    @property
    def __lmql_query_function__(self) -> QueryFunction:
        return self

    def __repr__(self) -> str:
        return f"<lmql query {self.__name__}>"

    # --- what LMQL's query functions tell about themselves ----------------------------------

    @property
    def name(self) -> str:
        return self.__name__

    @property
    def output_variables(self) -> list[str]:
        """The names the query defines: its prompt variables, then what its statements assign."""
        return list(self.compiled.output_variables)

    @property
    def output_keys(self) -> list[str]:
        return self.output_variables

    @property
    def input_keys(self) -> list[str]:
        """The query's inputs: a function's parameters, or (from source) the names it reads."""
        return self.compiled.input_names()

    @property
    def lmql_code(self) -> str:
        return self.compiled.parsed.source

    @property
    def args(self) -> list[str]:
        return self.input_keys

    @property
    def extra_args(self) -> dict[str, Any]:
        """The run options given with the query (``@lmql.query(model=..., decoder=...)``)."""
        return self.compiled.defaults

    def force_model(self, model: Any) -> None:
        """Run with ``model`` whatever the query's ``from`` or a call's ``model=`` say."""
        self.model = model



class BoundQuery:
    """A query method of an instance (``obj.method``): the query with ``self`` given."""

    def __init__(self, query: QueryFunction, instance: Any) -> None:
        self.query, self.instance = query, instance
        self.__name__ = query.__name__

    @property
    def compiled(self) -> CompiledQuery:
        return self.query.compiled

    @property
    def bound_args(self) -> tuple[Any, ...]:
        return (self.instance,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.query(self.instance, *args, **kwargs)

    async def run_in_query(self, *args: Any, **kwargs: Any) -> Any:
        return await self.query.run_in_query(self.instance, *args, **kwargs)

    @property
    def __lmql_query_function__(self) -> QueryFunction:
        return self.query

    def __repr__(self) -> str:
        return f"<bound lmql query {self.__name__} of {self.instance!r}>"


def query_from_string(source: str, input_variables: list[str] | None = None, is_async: bool = True,
                      output_writer: Any = None, **extra_args: Any) -> QueryFunction:
    """LMQL's name for ``lmql.query(source)``."""
    if output_writer is not None:
        extra_args["output_writer"] = output_writer
    return query(source, input_variables, is_async=is_async, **extra_args)


def main(query_fct: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``query_fct`` and wait for its result, in any thread but lmql's own client loop
    (LMQL's ``lmql.main``, for async queries called from sync code)."""
    result = query_fct(*args, **kwargs)
    return run_in_loop(result) if inspect.isawaitable(result) else result


def run_in_loop(awaitable: Awaitable[Any]) -> Any:
    """Wait for ``awaitable`` (a coroutine of lmql's API or any other) from sync code."""

    async def wait() -> Any:
        return await awaitable

    return _block(wait())


def query(fn: Callable[..., Any] | str | None = None, input_variables: list[str] | None = None, *,
          is_async: bool | None = None, **defaults: Any) -> Any:
    """``@lmql.query`` (docstring or plain-Python body), ``@lmql.query(model=..., decoder=...)``,
    or ``lmql.query("argmax ...")`` (async unless ``is_async=False``; ``input_variables`` names
    its parameters, in order, as LMQL's)."""
    if fn is None:
        return lambda f: query(f, is_async=is_async, **defaults)
    if isinstance(fn, QueryFunction):
        return fn
    if isinstance(fn, str):
        params = None
        if input_variables is not None:
            params = ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in input_variables], kwonlyargs=[],
                                   kw_defaults=[], defaults=[])
        compiled = _from_source(fn, params, defaults)
        return QueryFunction(compiled, True if is_async is None else is_async)
    compiled = _from_function(fn, defaults)
    wrapper = QueryFunction(compiled, inspect.iscoroutinefunction(fn) if is_async is None else is_async)
    functools.update_wrapper(wrapper, fn)
    return wrapper


async def run(source: str, *args: Any, **kwargs: Any) -> Any:
    """Compile and run LMQL ``source``; keyword arguments are its inputs and run options."""
    compiled = _from_source(source, None, {})
    return await run_async(compiled.start(args, kwargs))


def run_sync(source: str, *args: Any, **kwargs: Any) -> Any:
    _refuse_in_async_context()
    return _block(_from_source(source, None, {}).start(args, kwargs))


def _refuse_in_async_context() -> None:
    """As LMQL 0.7: a sync query call inside a coroutine would block the very loop it runs on."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise QueryError("LMQL queries cannot be called synchronously from within an async context: "
                     "await lmql.run(...) or the query's async form instead")


def run_file(path: str | Path, *args: Any, **kwargs: Any) -> Any:
    source = Path(path).read_text(encoding="utf-8")
    compiled = CompiledQuery(parse_query(source), None, {}, {"__name__": "__lmql__"}, Path(path).name,
                             trace_name=SOURCE_TRACE_NAME)
    return _block(compiled.start(args, kwargs))


def F(prompt: str, constraints: str | None = None, is_async: bool = False, **defaults: Any) -> QueryFunction:
    """A one-statement query as a function: ``lmql.F("Summarize {text}: [S]", "len(TOKENS(S)) < 20")``
    returns the variable's value (a dict when the prompt has several)."""
    source = repr(prompt) + (f" where {constraints}" if constraints else "")
    compiled = _from_source(source, None, defaults, "F")
    compiled.single_value = True
    return QueryFunction(compiled, is_async)


def _from_source(source: str, params: ast.arguments | None, defaults: dict[str, Any],
                 name: str = "query") -> CompiledQuery:
    """A query from source that finds its names where it was written: the caller's module, read
    live at each call, under the caller's locals."""
    frame = _caller_frame()
    module = frame.f_globals if frame is not None else None
    if params is not None:  # a query function's: compiled once, where it is defined
        return CompiledQuery(parse_query(source), params, defaults, _locals_of(frame), name, module=module,
                             trace_name=SOURCE_TRACE_NAME)
    key = (source, name)
    compiled = _compiled_sources.get(key)
    if compiled is not None:
        _compiled_sources.move_to_end(key)
        return compiled.for_call(defaults, _locals_of(frame), module)
    compiled = CompiledQuery(parse_query(source), None, defaults, _locals_of(frame), name, module=module,
                             trace_name=SOURCE_TRACE_NAME)
    _compiled_sources[key] = compiled
    if len(_compiled_sources) > COMPILED_SOURCES:
        _compiled_sources.popitem(last=False)
    return compiled


# ``lmql.run(source)`` called again with the same source (new inputs each time) parses, checks and
# compiles it once: that was two thirds of the client's time for a short constrained program
COMPILED_SOURCES = 128
_compiled_sources: OrderedDict[tuple[str, str], CompiledQuery] = OrderedDict()


def _caller_frame() -> Any:
    """The first frame outside lmql's own modules (a user's module may be named ``lmql_app``)."""
    frame = sys._getframe(1)
    while frame is not None and _is_ours(frame.f_globals.get("__name__", "")):
        frame = frame.f_back  # type: ignore[assignment]
    return frame


def _is_ours(module: str) -> bool:
    return module in ("lmql", "lmql_core") or module.startswith(("lmql.", "lmql_core."))


def _from_function(fn: Callable[..., Any], defaults: dict[str, Any]) -> CompiledQuery:
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        raise QueryError(f"cannot read the source of {fn.__name__}: define query functions in a file "
                         "(or use lmql.query(\"...\") with a string)") from None
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    definition = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    docstring = _raw_docstring(definition, source)
    own_names = {**_closure(fn), **_caller_locals()}
    if docstring is not None and docstring.strip().startswith("lmql"):
        parsed = parse_query(docstring)
    else:
        body = definition.body  # a first string is the first prompt, not a docstring
        if not body:
            raise QuerySyntaxError(f"{fn.__name__} has no query: write LMQL in a '''lmql docstring or "
                                   "prompt strings in its body")
        start = body[0].lineno
        text = textwrap.dedent("\n".join(source.splitlines()[start - 1:]))
        parsed = ParsedQuery(source, Clause(text, start))
    return CompiledQuery(parsed, definition.args, defaults, own_names, fn.__name__, module=fn.__globals__)


def _raw_docstring(definition: ast.FunctionDef | ast.AsyncFunctionDef, source: str) -> str | None:
    """The docstring as written (escapes such as ``\\n`` belong to the query's own strings)."""
    first = definition.body[0] if definition.body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return None
    literal = ast.get_source_segment(source, first.value) or ""
    literal = literal.lstrip("rRbBuU")
    quote = literal[:3] if literal[:3] in ('"""', "'''") else literal[:1]
    return literal[len(quote):-len(quote)]


def _closure(fn: Callable[..., Any]) -> dict[str, Any]:
    cells = fn.__closure__ or ()
    values = {}
    for name, cell in zip(fn.__code__.co_freevars, cells, strict=True):
        with contextlib.suppress(ValueError):  # a cell not filled yet
            values[name] = cell.cell_contents
    return values


def _caller_locals() -> dict[str, Any]:
    return _locals_of(_caller_frame())


def _locals_of(frame: Any) -> dict[str, Any]:
    """A frame's own names (none at module level, where its locals are its globals)."""
    return dict(frame.f_locals) if frame is not None and frame.f_locals is not frame.f_globals else {}
