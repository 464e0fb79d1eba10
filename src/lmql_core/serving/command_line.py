"""What the ``lmql`` commands that serve share, the core's ``serve-model`` and plugins' own (lmql-ray's
``serve-cluster``): the model and its loader options from the command line, the server's limits as
options (from the one table, ``lmtp.limits``), and errors shown as one line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

import click
from rich.console import Console

from lmql_core.base.options import command_line_pairs
from lmql_core.errors import LMQLError
from lmql_core.lmtp.limits import DEFAULT_MODEL, Limits


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds an option for each of the server's limits; the command gets them as the limits' own
    field names (``Limits.taken_from(kwargs)`` collects them)."""
    for limit in reversed(fields(Limits)):
        option = click.option(limit.metadata["flag"], limit.name, type=type(limit.default),
                              default=limit.default,
                              show_default=True, help=limit.metadata["help"] or None)
        command = option(command)
    return command


def model_and_loader_args(model: str, extra: list[str]) -> tuple[str, list[str]]:
    """Without a model named, click takes the first loader option for it
    (``serve-model --trust_remote_code``): give it back and serve the default model."""
    if model.startswith("-"):
        return DEFAULT_MODEL, [model, *extra]
    return model, list(extra)


def checked_loader_args(model: str, backend: str | None, args: list[str]) -> dict[str, Any]:
    """The ``--KEY VALUE`` pairs after MODEL, checked and converted by the backend's options."""
    from lmql_core.loading import plugin_manager
    from lmql_core.loading.identifiers import parse_model_id

    if not args:
        return {}
    spec = plugin_manager.backend_for_name(parse_model_id(model, backend).backend)
    return spec.options.check(command_line_pairs(args), from_text=True)


@contextlib.contextmanager
def shown_errors() -> Iterator[None]:
    """Show our own errors as one red line and exit 1, not as a traceback."""
    try:
        yield
    except LMQLError as error:
        Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/] {error}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C while loading or generating: stopped, nothing to report
        sys.exit(130)
    except Exception as error:  # a query's own Python failed (kept as it is, see query.errors.placed)
        where = getattr(error, "lmql_query_line", None)
        if where is None:
            raise
        message = f"[red]Error:[/] {type(error).__name__}: {error} ({where})"
        Console(stderr=True, soft_wrap=True).print(message, highlight=False)
        sys.exit(1)
