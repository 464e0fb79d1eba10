"""The ``lmql`` command line."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import click
from rich.console import Console

from lmql_core.base.options import parse_loader_args
from lmql_core.errors import LMQLError
from lmql_core.lmtp.limits import DEFAULT_HOST, DEFAULT_MODEL, DEFAULT_PORT, Limits
from lmql_core.serving.command_line import (
    checked_loader_args,
    limit_options,
    model_and_loader_args,
    shown_errors,
)

console = Console()


@click.group()
@click.version_option(package_name="lmql-core")
def cli() -> None:
    """lmql-core: serve local models over LMTP and use them from LMQL programs."""


class ServeModelCommand(click.Command):
    """``serve-model --help`` also lists every installed backend's own options."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        from lmql_core.base.options import ENGINE_OPTIONS
        from lmql_core.loading import plugin_manager

        with formatter.section("Options of the engine (after MODEL, any backend)"):
            formatter.write_dl([(f"--{name} VALUE", o.describe()) for name, o in ENGINE_OPTIONS.items()])
        for spec in plugin_manager.registry().backends.values():
            rows = [(f"--{name} VALUE", option.describe()) for name, option in spec.options.declared.items()]
            if isinstance(spec.options.extra, str):
                rows.append(("--KEY VALUE", f"any other key goes to {spec.options.extra}"))
            elif spec.options.extra is not None:
                rows.append(("--KEY VALUE", "other keys it takes (an unknown one is an error listing them)"))
            if rows:
                with formatter.section(f"Options of the {spec.name} backend (after MODEL)"):
                    formatter.write_dl(rows)


@cli.command(
    "serve-model",
    cls=ServeModelCommand,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("model", required=False, default=DEFAULT_MODEL)
@click.option("--backend", help="Backend for unprefixed model names (default: hf). See `lmql backends`.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int,
              help="Port to listen on (0: any free).")
@click.option("--cuda", is_flag=True, help="Load the model on the GPU(s).")
@click.option("--dtype", help="Weights' data type: float16, bfloat16, float32, 8bit, 4bit.")
@click.option("--load-on-demand", is_flag=True,
              help="Load other models when clients ask for them (default: serve only MODEL).")
@limit_options
@click.option("--auth-token", envvar="LMQL_AUTH_TOKEN",
              help="Refuse connections that do not present this token (env: LMQL_AUTH_TOKEN).")
@click.option("--no-openai", is_flag=True, help="Do not serve OpenAI's HTTP API (/v1/completions, ...) "
              "beside LMTP.")
@click.option("--openai-processes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Serve OpenAI's HTTP API from N processes of its own, which pass requests to the "
              "engine in LMTP's batched frames: for many concurrent OpenAI clients (0: on the server's "
              "event loop).")
@click.pass_context
def serve_model(ctx: click.Context, model: str, backend: str | None, host: str, port: int,
                cuda: bool, dtype: str | None, load_on_demand: bool, auth_token: str | None,
                no_openai: bool, openai_processes: int, **limit_values: Any) -> None:
    """Load MODEL once and serve it over LMTP (websocket) and OpenAI's HTTP API (/v1) until Ctrl-C or SIGTERM.

    MODEL is a model identifier: a Hugging Face name or folder (backend hf), `llama.cpp:PATH.gguf`,
    or `random`; without one, the bundled `lmql-tiny` is served. Any further `--KEY VALUE` pairs go
    to the backend's loader (e.g. `--trust_remote_code True`, `--n_ctx 4096`); True/False, ints and
    floats are parsed as such.
    """
    from lmql_core.serving.run import PortInUse, serve

    with shown_errors():
        model, loader_args = model_and_loader_args(model, ctx.args)
        loader_kwargs = checked_loader_args(model, backend, loader_args)
        limits = Limits.taken_from(limit_values)
        try:
            serve(model, host=host, port=port, cuda=cuda, dtype=dtype, backend=backend,
                  load_on_demand=load_on_demand, limits=limits, auth_token=auth_token,
                  openai=not no_openai, openai_processes=openai_processes, **loader_kwargs)
        except PortInUse as error:
            raise error.command_line() from None
    _exit_without_finalizing()


def _exit_without_finalizing() -> None:
    """End a command that has done its work, skipping the interpreter's finalization: with a
    model loaded, its garbage collections walk every object torch and transformers made (8-12 s
    after Ctrl-C on a lmql-tiny server, 5 s after `lmql run` with local:, issue 28) only to free
    memory the OS takes back anyway. atexit handlers still run first: they close connections and
    stop in-process engines (whose threads must not be inside a step when the process ends)."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@cli.command("backends")
def backends() -> None:
    """List installed plugins with their backends, prefixes and distributions."""
    from lmql_core.loading import plugin_manager
    for spec in plugin_manager.registry().backends.values():
        default = " (default)" if spec.name == plugin_manager.DEFAULT_BACKEND else ""
        console.print(f"[bold]{spec.name}[/]{default}", highlight=False)
        details = [spec.description, f"models: {', '.join(spec.models)}" if spec.models else "",
                   f"prefixes: {', '.join(spec.prefixes)}" if spec.prefixes else "",
                   f"from: {spec.distribution} (plugin {spec.plugin})"]
        _print_indented(filter(None, details))
    for name, dist in plugin_manager.KNOWN_BACKENDS.items():
        if name not in plugin_manager.registry().backends:
            console.print(f"[dim]{name}: not installed[/]", highlight=False)
            _print_indented([f"pip install {dist}", "from a checkout of lmql-core: "
                             f"pip install {plugin_manager.CHECKOUT_PATHS[dist]}"], style="dim")


def _print_indented(lines: Iterable[str], style: str = "") -> None:
    """Lines under a heading, wrapped to the terminal with their indent kept."""
    for line in lines:
        text = textwrap.fill(line, width=max(console.width, 40), initial_indent="    ",
                             subsequent_indent="      ", break_long_words=False)
        console.print(text, style=style, soft_wrap=True, highlight=False, markup=False)


@cli.command(
    "generate",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("prompt")
@click.option("--model", "-m", help="Model identifier; prefix with local: to load it in this "
              "process. Default: the model the server serves (lmql-tiny where it does not say).")
@click.option("--endpoint", "-e", help="host:port of the LMTP server (default localhost:8080).")
@click.option("--max-tokens", default=32, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float,
              help="0 decodes greedily; above 0 samples.")
@click.option("--tokenizer", help="Tokenizer name or folder, when the model's own is not found.")
@click.option("--api-key", envvar="LMQL_AUTH_TOKEN", help="The server's --auth-token.")
@click.pass_context
def generate(ctx: click.Context, prompt: str, model: str | None, endpoint: str | None,
             max_tokens: int, temperature: float, tokenizer: str | None, api_key: str | None) -> None:
    """Generate a continuation of PROMPT, streaming it to the terminal."""
    import lmql_core.api as api

    with shown_errors():
        model = model or _the_served_model(endpoint, api_key)
        local = model.startswith("local:")  # served: the server took its loader options
        loader_kwargs = checked_loader_args(model, None, ctx.args) if local else parse_loader_args(ctx.args)
        llm = api.model(model, endpoint=endpoint, tokenizer=tokenizer, api_key=api_key, **loader_kwargs)
        decoder = "sample" if temperature > 0 else "argmax"
        stream = llm.stream_sync(prompt, max_tokens=max_tokens, decoder=decoder,
                                 temperature=temperature)
        _echo_continuation(prompt, stream)


def _the_served_model(endpoint: str | None, api_key: str | None) -> str:
    """The one model the server serves (lmql-tiny where it does not say which)."""
    from lmql_core.lmtp.client.served import served_models

    models = served_models(endpoint, api_key) or [DEFAULT_MODEL]
    if len(models) > 1:
        named = ", ".join(f"'{name}'" for name in models)
        raise LMQLError(f"the server serves {named}: pick one with --model NAME")
    return models[0]


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "-m", help="Run with this model instead of the query's `from` clause "
              "(local:NAME loads it in this process).")
@click.option("--endpoint", "-e", help="host:port of the LMTP server for --model.")
@click.pass_context
def run_query(ctx: click.Context, file: str, model: str | None, endpoint: str | None) -> None:
    """Run the LMQL program in FILE and print its result.

    Further `--NAME VALUE` pairs are the query's inputs (True/False, ints and floats parsed as
    such), e.g. `lmql run capital.lmql --country France`.
    """
    from pathlib import Path

    import lmql_core.api as api
    from lmql_core.lmtp.client.loop import run_sync
    from lmql_core.query.errors import NoModelError
    from lmql_core.query.inputs import MissingInput
    from lmql_core.query.parser import parse_query
    from lmql_core.query.program import CompiledQuery

    with shown_errors():
        inputs = parse_loader_args(ctx.args)
        source = Path(file).read_text(encoding="utf-8")
        query = CompiledQuery(parse_query(source), None, {}, {"__name__": "__lmql__"}, Path(file).name)
        try:  # the query's syntax and inputs are checked before --model loads
            query.check_inputs(query.split_kwargs(inputs)[0], query.globals)
        except MissingInput as missing:
            raise missing.for_cli(file) from None
        if model is not None:
            inputs["model"] = api.model(model, endpoint=endpoint)
        try:
            results = run_sync(query.start((), inputs))
        except NoModelError:
            raise LMQLError(f"{file} names no model: pass --model NAME (local:NAME loads it in this "
                            f"process, e.g. --model local:{DEFAULT_MODEL}) or add a `from` clause to "
                            "the query") from None
        for result in results if isinstance(results, list) else [results]:
            _print_result(result)
    _exit_without_finalizing()


def _print_result(result: object) -> None:
    prompt, variables = getattr(result, "prompt", None), getattr(result, "variables", None)
    if prompt is None or variables is None:
        console.print(repr(result), highlight=False, markup=False)
        return
    console.print(prompt, highlight=False, markup=False, soft_wrap=True)
    for name, value in variables.items():
        console.print(f"  {name} = {value!r}", style="dim", highlight=False, markup=False, soft_wrap=True)


def _echo_continuation(prompt: str, stream: Iterator[str]) -> None:
    """The prompt, then the continuation as it arrives; the prompt shows with the first piece
    (an error before it shows alone), and the line always ends, so an error starts its own."""
    shown = False
    try:
        for delta in stream:
            sys.stdout.write(delta if shown else prompt + delta)
            sys.stdout.flush()
            shown = True
        if not shown:
            sys.stdout.write(prompt)
            shown = True
    finally:
        if shown:
            sys.stdout.write("\n")
            sys.stdout.flush()


def main() -> None:
    from lmql_core.base.coexistence import MixedInstallation, check

    try:
        check()
    except MixedInstallation as error:
        Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/] {error}", highlight=False)
        sys.exit(1)
    warnings.showwarning = _show_warning
    add_plugin_commands()
    cli()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A command's warnings as one line each (``Warning: ...``), not as Python's source lines."""
    Console(stderr=True, soft_wrap=True).print(f"[yellow]Warning:[/] {message}", highlight=False)


def add_plugin_commands() -> None:
    """Subcommands plugins register (``register_commands``), e.g. lmql-ray's ``serve-cluster``;
    a name the core uses stays the core's."""
    from lmql_core.loading import plugin_manager
    for command in plugin_manager.registry().commands:
        if command.name not in cli.commands:
            cli.add_command(command)
