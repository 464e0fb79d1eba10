"""Sessions: tests, lint, typecheck, compat (LMQL 0.7.3), ray (lmql-ray) -- the README's test
command and CI run all five; bench on demand. Every environment gets the CPU torch pin first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "compat", "ray"]
nox.options.reuse_existing_virtualenvs = False
# without Python 3.11 every session would be skipped and nox would exit 0, having run nothing
nox.options.error_on_missing_interpreters = True

TORCH = "torch==2.13.0"  # the CPU build; an unpinned torch pulls a multi-GB CUDA build
RAY = "ray[serve]==2.60.0"  # lmql-ray subclasses Serve's request router, a developer API: pinned
PYTHON = "3.11"


LLAMA_CPP = "llama-cpp-python>=0.3.36"  # as plugins/llamacpp/pyproject.toml asks
WHEELS = Path(".nox") / "wheels"


def install_project(session: nox.Session, for_tests: bool = True) -> None:
    session.install(TORCH)
    session.install("./", "./plugins/hf", "./tests/plugin_example", "openai")
    if for_tests:
        # triton (1 GB): the HF backend's GPU kernels, tested on the CPU through Triton's
        # interpreter; jsonschema checks the structured outputs of the OpenAI API's tests
        session.install("triton", "jsonschema", "pytest>=8", "pytest-timeout")
        session.install(str(llama_cpp_wheel(session)), "./plugins/llamacpp[export]")


def free_environment(session: nox.Session) -> None:
    """Delete a session's environment once it passed, unless nox was asked to reuse it (-r): the
    next run rebuilds it anyway, and CI's five sessions then need the disk of one or two at a
    time (each holds torch; the tests' also triton), not of all five (~8 GB). A failed session
    never gets here: its environment stays for a look."""
    if not getattr(session.virtualenv, "reuse_existing", True):
        shutil.rmtree(session.virtualenv.location, ignore_errors=True)


def llama_cpp_wheel(session: nox.Session) -> Path:
    """llama-cpp-python has no wheel on the registry, and compiling it is half of a first run
    on 2 cores: it is built once into .nox/wheels and every later environment installs that
    wheel (nox recreates the environments on each run)."""
    built = sorted(WHEELS.glob("llama_cpp_python-*.whl"))
    if not built:
        session.run("pip", "wheel", "--no-deps", "-w", str(WHEELS), LLAMA_CPP,
                    env={"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
        built = sorted(WHEELS.glob("llama_cpp_python-*.whl"))
    return built[-1].resolve()


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """All tests: core, HF backend, llama.cpp backend, third-party plugin. Everything is installed
    here, so a test module skipped whole, or a run in which no test passed, fails the session
    (tests/skip_report.py); pytest itself fails when it collected nothing."""
    install_project(session)
    # the OpenAI-compatible server of llama-cpp-python, which tests/test_openai_llamacpp.py runs:
    # its extras only (the llama-cpp-python just installed satisfies the requirement itself)
    session.install("llama-cpp-python[server]")
    # the slowest tests named at the end: where the CI's time goes
    session.run("pytest", "-ra", "--durations=15", *session.posargs,
                env={"HF_HUB_OFFLINE": "1", "LMQL_STRICT_SKIPS": "1"})
    free_environment(session)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "plugins", "tests", "scripts", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    install_project(session, for_tests=False)
    session.install("mypy")
    session.run("mypy", "src/lmql_core", "src/lmql", "plugins/hf/src/lmql_hf")
    free_environment(session)


# LMQL 0.7.3's own server and client, with the transformers of its time: 4.38 is the last release
# whose stopping criteria short-circuit like 4.34's (which LMQL 0.7.3's streamer relies on) and
# one that installs on Python 3.11 with torch 2.13; numpy 2 postdates both.
LMQL_073 = ("lmql==0.7.3", "transformers==4.38.2", "numpy<2")


def lmql_073_python(session: nox.Session) -> Path:
    """A second environment with LMQL 0.7.3, kept between runs while its requirements stay the same."""
    lmql_env = Path(session.virtualenv.location).parent / "compat-lmql073"
    python = lmql_env / "bin" / "python"
    stamp = lmql_env / "compat-requirements.txt"
    wanted = "\n".join((TORCH, *LMQL_073))
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        session.run_install("python", "-m", "venv", "--clear", str(lmql_env))
        session.run_install(str(python), "-m", "pip", "install", "-q", TORCH, external=True)
        session.run_install(str(python), "-m", "pip", "install", "-q", *LMQL_073, external=True)
        stamp.write_text(wanted)
    return python


@nox.session(python=PYTHON)
def compat(session: nox.Session) -> None:
    """Drop-in compatibility with LMQL 0.7.3: the same LMQL programs against its server and ours,
    our client against its server (tests/compat). Posargs go to run_compat.py (--random-model)."""
    session.install(TORCH)
    session.install("./", "./plugins/hf")
    python = lmql_073_python(session)
    work = Path(session.create_tmp()) / "run"
    session.run("python", "tests/compat/run_compat.py", "--lmql-python", str(python), "--work", str(work),
                *session.posargs, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    free_environment(session)


@nox.session(python=PYTHON)
def ray(session: nox.Session) -> None:
    """lmql-ray in an environment of its own (the tests session's has no Ray: lmql-core runs
    without it): plugins/ray/tests on a local Ray Serve with replicas of lmql-tiny, LMQL 0.7.3's
    client from the compat session's environment (built here if compat has not run)."""
    session.install(TORCH)
    session.install(RAY, "./", "./plugins/hf", "./plugins/ray", "pytest>=8", "pytest-timeout", "openai")
    lmql_073 = lmql_073_python(session)
    session.run("pytest", "-ra", "plugins/ray/tests", *session.posargs,
                env={"HF_HUB_OFFLINE": "1", "LMQL_STRICT_SKIPS": "1", "LMQL_073_PYTHON": str(lmql_073)})
    free_environment(session)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """CPU benchmark: our server against LMQL 0.7.3's on lmql-tiny and a 4-layer GPT-2 (posargs
    go to cpu_bench.py); then the engine's host work a step at a batch of 256, without a model
    (scheduler_cost.py: a few seconds)."""
    session.install(TORCH)
    session.install("./", "./plugins/hf")
    python = lmql_073_python(session)
    session.run("python", "benchmarks/cpu_bench.py", "--lmql-python", str(python), *session.posargs)
    session.run("python", "benchmarks/scheduler_cost.py")
    # issue 31: constrained LMQL programs, each runtime against its own server
    session.run("python", "benchmarks/constrained_programs.py", "--lmql-python", str(python))
    # issue 31: each constraint kind's mask per step on a 50k BPE; the GPU benchmark's smoke run
    session.run("python", "benchmarks/mask_costs.py", "--reps", "1", "--walk-steps", "16")
    session.run("python", "benchmarks/constraints_gpu.py", "--cpu", "--lmql-python", str(python))
