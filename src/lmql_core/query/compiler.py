"""The prompt program to Python: each top-level string becomes an awaited prompt statement.

``"Q: {q} A:[ANSWER]" where C`` compiles to::

    __lmql_vars = await __lmql_ctx.prompt([f"Q: {q} A:", __lmql_ctx.hole("ANSWER", None)],
                                          "C", locals(), LINE)
    ANSWER = __lmql_vars["ANSWER"]

so later Python sees ``ANSWER`` as an ordinary local, and ``return`` works as in any function.
"""

from __future__ import annotations

import ast
import copy
from typing import Any

from lmql_core.query.calls import PRELUDE, BodyCalls
from lmql_core.query.errors import QueryError, QuerySyntaxError
from lmql_core.query.parser import WHERE_MARK
from lmql_core.query.qstring import Hole, Interpolation, Text, outside_quotes, parse_qstring

CTX = "__lmql_ctx"
FUNCTION = "__lmql_query__"


def compile_query(body: list[ast.stmt], params: ast.arguments, filename: str) -> Any:
    """The code of ``async def __lmql_query__(__lmql_ctx, <params>): <body as prompt program>``."""
    body = PromptRewriter().visit(ast.Module(copy.deepcopy(body), [])).body or [ast.Pass()]
    body = BodyCalls(CTX).visit(ast.Module(body, [])).body
    params = ast.arguments(posonlyargs=[], args=[ast.arg(CTX), *params.posonlyargs, *params.args],
                           vararg=params.vararg, kwonlyargs=params.kwonlyargs, kw_defaults=params.kw_defaults,
                           kwarg=params.kwarg, defaults=params.defaults)
    function = ast.AsyncFunctionDef(name=FUNCTION, args=params, body=body, decorator_list=[], returns=None)
    if "type_params" in ast.AsyncFunctionDef._fields:  # Python 3.12+
        function.type_params = []  # type: ignore[attr-defined]
    module = ast.Module(body=[*ast.parse(PRELUDE).body, function], type_ignores=[])
    ast.fix_missing_locations(module)
    try:
        return compile(module, filename, "exec")
    except SyntaxError as e:
        raise QuerySyntaxError(e.msg, e.lineno) from None


def parse_body(text: str, first_line: int) -> list[ast.stmt]:
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        line = (e.lineno or 1) + first_line - 1
        raise QuerySyntaxError(f"invalid syntax: {e.msg}", line) from None
    ast.increment_lineno(tree, first_line - 1)
    return tree.body


def prompt_of(stmt: ast.stmt) -> tuple[ast.expr, ast.expr | None] | None:
    """``(string, where condition or None)`` when ``stmt`` is a prompt statement."""
    if not isinstance(stmt, ast.Expr):
        return None
    value = stmt.value
    if _is_string(value):
        return value, None
    if (isinstance(value, ast.Tuple) and len(value.elts) == 3 and _is_string(value.elts[0])
            and isinstance(value.elts[1], ast.Name) and value.elts[1].id == WHERE_MARK):
        return value.elts[0], value.elts[2]
    return None


def _is_string(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(node, ast.JoinedStr)


class PromptRewriter(ast.NodeTransformer):
    """Prompt statements to awaited ``prompt`` calls; nested function bodies are left alone."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]
    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Expr(self, node: ast.Expr) -> Any:
        prompt = prompt_of(node)
        if prompt is None:
            return self.generic_visit(node)
        string, where = prompt
        try:
            segments = _segments(string)
        except QueryError as e:
            raise e.at(node.lineno) from None
        holes = [s.args[0].value for s in segments if _is_hole_call(s)]  # type: ignore[attr-defined]
        where_src = ast.Constant(ast.unparse(where)) if where is not None else ast.Constant(None)
        call = ast.Await(_ctx_call("prompt", [ast.List(segments, ast.Load()), where_src,
                                              ast.Call(ast.Name("locals", ast.Load()), [], []),
                                              ast.Constant(node.lineno)]))
        statements: list[ast.stmt] = [ast.Assign([ast.Name("__lmql_vars", ast.Store())], call)]
        for name in dict.fromkeys(holes):
            statements.append(ast.Assign([ast.Name(name, ast.Store())],
                                         ast.Subscript(ast.Name("__lmql_vars", ast.Load()),
                                                       ast.Constant(name), ast.Load())))
        for statement in statements:
            ast.copy_location(statement, node)
        return statements


def _ctx_call(method: str, args: list[ast.expr]) -> ast.Call:
    return ast.Call(ast.Attribute(ast.Name(CTX, ast.Load()), method, ast.Load()), args, [])


def _is_hole_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "hole"


def _segments(string: ast.expr) -> list[ast.expr]:
    """A prompt string's pieces: text (an f-string where it interpolates) and hole calls."""
    if isinstance(string, ast.Constant):
        parts: list[Any] = parse_qstring(str(string.value))
    else:  # an explicit f-string: its formatted values are text, holes come from its literal parts
        assert isinstance(string, ast.JoinedStr)
        parts = []
        for value in string.values:
            if isinstance(value, ast.Constant):
                parts += parse_qstring(str(value.value), interpolate=False)
            else:
                parts.append(value)
    segments: list[ast.expr] = []
    text: list[ast.expr] = []

    def flush() -> None:
        if text:
            segments.append(ast.JoinedStr(list(text)) if any(not isinstance(t, ast.Constant) for t in text)
                            else ast.Constant("".join(t.value for t in text)))  # type: ignore[attr-defined]
            text.clear()

    for part in parts:
        if isinstance(part, Hole):
            flush()
            hole = _ctx_call("hole", [ast.Constant(part.name), ast.Constant(part.type_expr)])
            if part.decorators:  # evaluated with the statement, before any of its variables, as LMQL
                decorators = [_expression(d, f"decorator @{d}") for d in part.decorators]
                hole.keywords.append(ast.keyword("decorators", ast.List(decorators, ast.Load())))
            segments.append(hole)
        elif isinstance(part, Text):
            text.append(ast.Constant(part.text))
        elif isinstance(part, Interpolation):
            text.append(_formatted(part.expr))
        else:
            text.append(part)
    flush()
    return segments


def _formatted(field: str) -> ast.FormattedValue:
    """``{expr!r:spec}`` as an f-string field; a plain ``{expr}`` formats as LMQL's (chat lists)."""
    expr, conversion, spec = _split_field(field)
    value = _expression(expr, f"'{{{field}}}' in a prompt string")
    if conversion is None and spec is None:
        value = _ctx_call("format", [value])
    return ast.FormattedValue(value, ord(conversion) if conversion else -1,
                              ast.JoinedStr([ast.Constant(spec)]) if spec else None)


def _expression(source: str, what: str) -> ast.expr:
    """A Python expression from a prompt string, located at its prompt statement (not line 1)."""
    try:
        value = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        raise QuerySyntaxError(f"{what} is not a Python expression") from None
    for node in ast.walk(value):
        for attribute in ("lineno", "end_lineno", "col_offset", "end_col_offset"):
            if hasattr(node, attribute):
                delattr(node, attribute)
    return value


def _split_field(field: str) -> tuple[str, str | None, str | None]:
    """``expr!r:spec`` to its expression, conversion and format spec."""
    for i, c, depth in outside_quotes(field):
        if depth == 0 and c == "!" and field[i + 1:i + 2] != "=":
            conversion, _, spec = field[i + 1:].partition(":")
            return field[:i], conversion.strip(), spec or None
        if depth == 0 and c == ":":
            return field[:i], None, field[i + 1:]
    return field, None, None
