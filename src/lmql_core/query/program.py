"""A compiled query and its runs: inputs bound, model and decoder chosen, results assembled."""

from __future__ import annotations

import ast
import asyncio
import copy
import itertools
import linecache
import math
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from lmql_core.api import certificate as certificates
from lmql_core.api import tracing
from lmql_core.api.llm import LLM
from lmql_core.base.decoders import SEARCH_DECODERS
from lmql_core.lmtp.client.loop import run_async
from lmql_core.query.chat import install_runtime
from lmql_core.query.compiler import FUNCTION, compile_query, parse_body, prompt_of
from lmql_core.query.decoders import DecoderSpec, direct, log_softmax
from lmql_core.query.errors import NoModelError, QueryError, UnknownVariable, placed
from lmql_core.query.inputs import (
    MissingInput,
    bind_positional,
    bound_names,
    defined_names,
    missing_inputs,
    positional_inputs,
    query_reads,
)
from lmql_core.query.parser import WHERE_MARK, ParsedQuery
from lmql_core.query.qstring import Hole, parse_qstring
from lmql_core.query.result import LMQLResult, variable_values
from lmql_core.query.runtime import Program, QueryContext
from lmql_core.query.searches import run_search
from lmql_core.query.vocabulary import Vocabulary
from lmql_core.query.where import parse_where

FILENAME = "<lmql query>"
_numbers = itertools.count(1)
RUN_OPTIONS = ("model", "decoder", "output_writer", "certificate", "cache", *DecoderSpec.KNOWN)


@dataclass
class CompiledQuery:
    parsed: ParsedQuery
    params: ast.arguments | None  # None: a query from source, whose inputs are its free names
    defaults: dict[str, Any] = field(default_factory=dict)  # from @lmql.query(model=..., decoder=...)
    globals: dict[str, Any] = field(default_factory=dict)  # names of its own (closure, prologue)
    name: str = "query"
    module: dict[str, Any] | None = None  # the defining module's globals, read live at each call
    single_value: bool = False  # lmql.F's: each run gives its variable's value (see variable_values)
    trace_name: str | None = None  # its tracer's name, where not ``name`` ("<function query>" from source)

    def namespace(self) -> dict[str, Any]:
        """What a run sees: the module's globals as they are now (a helper defined below the query
        counts), under the query's own names."""
        return _namespace({**self.module, **self.globals} if self.module is not None else self.globals)

    def __post_init__(self) -> None:
        self.body = parse_body(self.parsed.body.text, self.parsed.body.line)
        self.variables = frozenset(_holes(self.body))
        distribution = self.parsed.clauses.get("distribution")
        self.distribution: tuple[str, ast.expr] | None = None
        if distribution is not None:
            self.distribution = self._distribution(distribution.text, distribution.line)
        self.reads = query_reads(self.body, self.parsed)
        self.free_names = set(self.reads)
        self.bound = bound_names(self.body) | self.variables | {WHERE_MARK}
        if self.params is not None:
            self.bound |= _param_names(self.params)
        self._unknown_variable: QueryError | None = None  # reported when called, as LMQL does
        try:
            self._check_constraints()
        except UnknownVariable as e:
            self._unknown_variable = e
        self.output_variables = defined_names(self.body, _holes(self.body))
        self._code: dict[tuple[str, ...], Any] = {}
        self.filename = _source_file(self.parsed, self.body)
        self._compiled(())  # Python's own compile-time errors ('break' outside a loop) now, not after loading
        self._run_prologue()

    def for_call(self, defaults: dict[str, Any], names: dict[str, Any],
                 module: dict[str, Any] | None) -> CompiledQuery:
        """This query, compiled once, as written at another call site: its own defaults, names and
        module, its prologue run again (as LMQL runs a query's source each time); parsing,
        checks and compiled code shared."""
        query = copy.copy(self)
        query.defaults, query.globals, query.module = dict(defaults), dict(names), module
        query._run_prologue()
        return query

    def _run_prologue(self) -> None:
        """Python before the decoder keyword runs once, as module code of the query (as in LMQL):
        what it defines is a global of every run."""
        prologue = self.parsed.prologue
        if prologue is None:
            return
        code = compile(ast.Module(parse_body(prologue.text, prologue.line), []), FILENAME, "exec")
        namespace = self.namespace()
        before = dict(namespace)
        exec(code, namespace)
        self.globals.update({k: v for k, v in namespace.items() if k not in before or before[k] is not v})

    def _distribution(self, text: str, line: int) -> tuple[str, ast.expr]:
        try:
            expr = ast.parse(text, mode="eval").body
        except SyntaxError:
            expr = None
        if not (isinstance(expr, ast.Compare) and isinstance(expr.left, ast.Name)
                and len(expr.ops) == 1 and isinstance(expr.ops[0], ast.In)):
            raise QueryError("write the distribution clause as: distribution VAR in [values]", line,
                             self.parsed.source_line(line))
        if expr.left.id not in self.variables:
            raise QueryError(f"the distribution variable {expr.left.id} is not a prompt variable", line,
                             self.parsed.source_line(line))
        return expr.left.id, expr.comparators[0]

    def _check_constraints(self) -> None:
        """Every where clause parses into constraints we can enforce, before anything runs."""
        where = self.parsed.clauses.get("where")
        try:
            parse_where(where.text if where else None, self.variables, self.variables)
        except QueryError as e:
            line = where.line if where else None
            raise e.at(line, self.parsed.source_line(line)) from None
        for node in ast.walk(ast.Module(self.body, [])):
            prompt = prompt_of(node) if isinstance(node, ast.stmt) else None
            if prompt is None or prompt[1] is None:
                continue
            holes = frozenset(_string_holes(prompt[0]))
            try:
                parse_where(ast.unparse(prompt[1]), holes, self.variables)
            except QueryError as e:
                line = node.lineno  # type: ignore[attr-defined]
                raise e.at(line, self.parsed.source_line(line)) from None

    def program(self) -> Program:
        where = self.parsed.clauses.get("where")
        return Program(where.text if where else None, self.variables,
                       self.distribution[0] if self.distribution else None)

    def _compiled(self, input_names: tuple[str, ...]) -> Any:
        if input_names not in self._code:
            params = self.params
            if params is None:
                params = ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in input_names], kwonlyargs=[],
                                       kw_defaults=[], defaults=[])
            self._code[input_names] = compile_query(self.body, params, self.filename)
        return self._code[input_names]

    def function(self, input_names: tuple[str, ...], namespace: dict[str, Any]) -> Any:
        exec(self._compiled(input_names), namespace)
        return namespace[FUNCTION]

    def check_inputs(self, inputs: dict[str, Any], namespace: dict[str, Any]) -> None:
        """Every name the query reads is defined (LMQL's TypeError when not), and its where clauses
        name prompt variables: both before a model is loaded."""
        missing = missing_inputs(self.reads, self.bound, inputs, namespace)
        if missing:
            line = missing[0][1]
            raise MissingInput([name for name, _ in missing], line, self.parsed.source_line(line))
        if self._unknown_variable is not None:
            raise self._unknown_variable

    def input_names(self) -> list[str]:
        if self.params is not None:
            return [a.arg for a in [*self.params.posonlyargs, *self.params.args, *self.params.kwonlyargs]]
        return positional_inputs(self.free_names, self.output_variables)

    # --- a call --------------------------------------------------------------------------

    def split_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Query inputs, run options (model=, decoder=, n=, ...) and, for a query function, names
        its body reads that are not its parameters, given by keyword (as LMQL takes them)."""
        inputs: dict[str, Any] = {}
        options: dict[str, Any] = {}
        free: dict[str, Any] = {}
        declared = _param_names(self.params) if self.params is not None else self.free_names
        for key, value in kwargs.items():
            if key in declared:
                inputs[key] = value
            elif key in self.free_names and key not in self.bound:
                free[key] = value
            elif key in RUN_OPTIONS:
                options[key] = value
            else:
                raise QueryError(f"unknown argument '{key}': the query does not use it and it is not one "
                                 f"of {', '.join(RUN_OPTIONS)}")
        return inputs, options, free

    async def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await run_async(self.start(args, kwargs))

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        """The run, to be awaited on the client loop. Inputs, decoder and model are settled here,
        in the caller's thread: loading a ``local:`` model or connecting blocks on that loop."""
        inputs, options, free = self.split_kwargs(kwargs)
        options = {**self.defaults, **options}
        namespace = {**self.namespace(), **free}
        install_runtime(namespace, options.get("output_writer"))
        scope = {**namespace, **inputs}
        if self.params is None and args:
            inputs, args = bind_positional(self.input_names(), args, inputs), ()
            scope.update(inputs)
        self.check_inputs(inputs, namespace)
        decoder = self._decoder(scope, options)
        model = self._model(scope, options)
        if model.decoding:
            decoder = self._decoder(scope, options, model.decoding)
        certificates.requested(decoder.certificate)  # a bad certificate= fails now, not after the run
        return self._traced(self._run(args, inputs, namespace, scope, decoder, model), decoder.certificate)

    async def _traced(self, run: Coroutine[Any, Any, Any], certificate: Any) -> Any:
        """The run, recorded in a child tracer of the active one (or in its own when a certificate
        is asked for), its certificate handed over as ``certificate=`` says."""
        wanted = certificates.requested(certificate)
        with tracing.scope(self.trace_name or self.name, record=wanted) as tracer:
            results = await run
            if self.single_value:
                results = variable_values(results)
            if wanted and tracer is not None:
                return certificates.deliver(certificate, tracer, results)
        return results

    async def _run(self, args: tuple[Any, ...], inputs: dict[str, Any], namespace: dict[str, Any],
                   scope: dict[str, Any], decoder: DecoderSpec, model: LLM) -> Any:
        vocab = Vocabulary.of(await model.resolve_tokenizer())
        fn = self.function(tuple(sorted(inputs)) if self.params is None else (), namespace)
        program = self.program()
        program.globals = namespace
        if decoder.name in SEARCH_DECODERS:
            results = await run_search(self, fn, program, model, vocab, decoder, args, inputs)
        else:
            runs = await asyncio.gather(*(self._once(fn, program, model, vocab, decoder, args, inputs)
                                          for _ in range(decoder.n)))
            if not any(decided for _, decided in runs):
                return [runs[0][0]]  # as LMQL: a run that met no variable is one result, in a list
            results = [result for result, _ in runs]
        results = [await self._distribute(r, scope, model, vocab) for r in results]
        return results[0] if len(results) == 1 and decoder.singular else list(results)

    def context(self, program: Program, model: LLM, vocab: Vocabulary, decide: Any) -> QueryContext:
        return QueryContext(program, model, vocab, decide, self.parsed.source_line)

    async def _once(self, fn: Any, program: Program, model: LLM, vocab: Vocabulary, decoder: DecoderSpec,
                    args: tuple[Any, ...], inputs: dict[str, Any]) -> tuple[Any, bool]:
        """One run: its result, and whether it decided any variable."""
        ctx = self.context(program, model, vocab, direct(decoder))
        returned = await self.call(fn, ctx, args, inputs)
        result = returned if returned is not None else LMQLResult(ctx.prompt_text, dict(ctx.variables))
        return result, bool(ctx.variables) or ctx.reached_distribution

    async def call(self, fn: Any, ctx: QueryContext, args: tuple[Any, ...], inputs: dict[str, Any]) -> Any:
        try:
            return await fn(ctx, *args, **inputs)
        except QueryError:
            raise
        except Exception as e:
            if not _raised_in_query(e):
                raise
            line = _query_line(e)
            raise placed(e, line, self.parsed.source_line(line)) from None

    def _decoder(self, scope: dict[str, Any], options: dict[str, Any],
                 model_defaults: dict[str, Any] | None = None) -> DecoderSpec:
        name = options.get("decoder") or self.parsed.decoder or "argmax"
        kwargs: dict[str, Any] = {}
        if self.parsed.decoder_args is not None and not options.get("decoder"):
            kwargs = self._eval(f"__lmql_kwargs({self.parsed.decoder_args.text})", scope,
                                self.parsed.decoder_args.line, __lmql_kwargs=lambda **kw: kw)
        # as LMQL (derive_decoder_args): a call's arguments the decoder does not take are left out
        kwargs.update({k: v for k, v in options.items() if k in DecoderSpec.accepted(name)})
        return DecoderSpec.build(name, kwargs, model_defaults)

    def _model(self, scope: dict[str, Any], options: dict[str, Any]) -> LLM:
        from lmql_core import api

        chosen = options.get("model")
        clause = self.parsed.clauses.get("from")
        if chosen is None and clause is not None:
            chosen = self._eval(clause.text, scope, clause.line)
        if chosen is None:
            chosen = api.get_default_model()
        if chosen is None:
            raise NoModelError("no model for this query: add `from \"local:lmql-tiny\"` (or another model), "
                             "pass model=..., or call lmql.set_default_model(...)")
        if isinstance(chosen, LLM):
            return chosen
        if isinstance(chosen, str):
            return api.model(chosen)
        raise QueryError(f"the query's model must be a model name or lmql.model(...), not {chosen!r}")

    def _eval(self, text: str, scope: dict[str, Any], line: int, **extra: Any) -> Any:
        try:
            return eval(compile("(" + text + "\n)", FILENAME, "eval"), {**scope, **extra})
        except QueryError:
            raise
        except Exception as e:
            raise QueryError(f"{type(e).__name__}: {e}", line, self.parsed.source_line(line)) from None

    async def _distribute(self, result: Any, scope: dict[str, Any], model: LLM, vocab: Vocabulary) -> Any:
        """Score the distribution variable's values after the prompt (as LMQL: mean log-probability
        per token, normalized over the values)."""
        if self.distribution is None or not isinstance(result, LMQLResult):
            return result
        name, values_expr = self.distribution
        line = self.parsed.clauses["distribution"].line
        values = self._eval(ast.unparse(values_expr), {**scope, **result.variables}, line)
        if not values or not all(isinstance(v, str) for v in values):
            raise QueryError("the distribution's values must be a non-empty list of strings", line,
                             self.parsed.source_line(line))
        prompt = result.prompt
        prompt_ids = ([vocab.bos] if vocab.bos is not None else []) + vocab.encode(prompt)
        means = []
        for value in values:
            logprobs = await model.score_tokens(prompt_ids, vocab.encode(value))
            means.append(sum(logprobs) / len(logprobs))
        log_probs = log_softmax(means)
        best = max(range(len(values)), key=lambda i: log_probs[i])
        result.variables[name] = values[best]
        result.variables[f"P({name})"] = [(v, math.exp(lp)) for v, lp in zip(values, log_probs, strict=True)]
        result.variables[f"log P({name})"] = list(zip(values, log_probs, strict=True))
        result.prompt = prompt + values[best]
        result.distribution_variable, result.distribution_values = name, list(values)
        return result


def _namespace(base: dict[str, Any]) -> dict[str, Any]:
    import lmql

    namespace = dict(base)
    namespace.setdefault("lmql", lmql)
    namespace.setdefault("__builtins__", __builtins__)
    return namespace


def _source_file(parsed: ParsedQuery, body: list[ast.stmt]) -> str:
    """The file name the query's code is compiled under. A query that defines functions (a query
    inside a query) gets its own, with its source in ``linecache``: ``@lmql.query`` reads it."""
    if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
               for n in ast.walk(ast.Module(body, []))):
        return FILENAME
    name = f"{FILENAME[:-1]} {next(_numbers)}>"
    lines = parsed.source.splitlines(keepends=True)
    linecache.cache[name] = (len(parsed.source), None, lines, name)
    return name


def _holes(body: list[ast.stmt]) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.Module(body, [])):
        prompt = prompt_of(node) if isinstance(node, ast.stmt) else None
        if prompt is not None:
            try:
                names += _string_holes(prompt[0])
            except QueryError as e:
                raise e.at(node.lineno) from None  # type: ignore[attr-defined]
    return names


def _string_holes(string: ast.expr) -> list[str]:
    if isinstance(string, ast.Constant):
        parts = parse_qstring(str(string.value))
    else:
        parts = [p for v in string.values if isinstance(v, ast.Constant)  # type: ignore[attr-defined]
                 for p in parse_qstring(str(v.value), interpolate=False)]
    return [p.name for p in parts if isinstance(p, Hole)]


def _param_names(params: ast.arguments) -> set[str]:
    args = [*params.posonlyargs, *params.args, *params.kwonlyargs]
    return {a.arg for a in args}


def _raised_in_query(e: BaseException) -> bool:
    return any(_in_query(frame.f_code.co_filename) for frame, _ in traceback.walk_tb(e.__traceback__))


def _query_line(e: BaseException) -> int | None:
    frames = traceback.walk_tb(e.__traceback__)
    lines = [line for frame, line in frames if _in_query(frame.f_code.co_filename)]
    return lines[-1] if lines else None


def _in_query(filename: str) -> bool:
    return filename.startswith(FILENAME[:-1])
