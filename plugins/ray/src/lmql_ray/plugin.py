"""Registers ``lmql serve-cluster`` with lmql-core (the command and Ray load only when it runs)."""

from __future__ import annotations

from typing import Any

from lmql_core.plugin import hookimpl


@hookimpl
def register_commands(register: Any) -> None:
    from lmql_ray.cli import serve_cluster

    register(serve_cluster)
