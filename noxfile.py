"""Sessions: tests (CI), lint, typecheck. Every environment gets the CPU torch pin first."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = False

TORCH = "torch==2.13.0"  # the CPU build; an unpinned torch pulls a multi-GB CUDA build
PYTHON = "3.11"


def install_project(session: nox.Session, llamacpp: bool = True) -> None:
    session.install(TORCH)
    session.install("./", "./plugins/hf", "./tests/plugin_example", "pytest>=8", "pytest-timeout")
    if llamacpp:
        # llama-cpp-python has no wheel on the registry: it compiles once per environment
        session.install("./plugins/llamacpp[export]",
                        env={"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """All tests: core, HF backend, llama.cpp backend, third-party plugin."""
    install_project(session)
    session.run("pytest", "-ra", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "plugins", "tests", "scripts", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    install_project(session, llamacpp=False)
    session.install("mypy")
    session.run("mypy", "src/lmql_core", "src/lmql")
