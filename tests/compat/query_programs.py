"""Run the LMQL programs of ``queries.py`` with whichever ``lmql`` this Python has.

    <LMQL 0.7.3 venv>/bin/python tests/compat/query_programs.py ENDPOINT MODEL_DIR [NAME | -NAME ...]
    <lmql-core venv>/bin/python  tests/compat/query_programs.py ENDPOINT MODEL_DIR [NAME | -NAME ...]
    (ENDPOINT ``http://host:port/v1``: through OpenAI's API, with lmql-core's ``openai:`` transport;
    ENDPOINT ``local``: the model in this process, ``local:MODEL_DIR``, loaded once for all programs)

The same protocol as ``programs.py``: a line ``COMPAT_PLAN <json list>``, then one line
``COMPAT <json>`` per program with its result (or error); ``run_compat.py`` compares the two
sides. Query strings run with ``lmql.run(source, model=..., **inputs)``; Python programs
(decorators, ``lmql.F``) are written to a module file and imported, so that each side's
``@lmql.query`` can read their source, then their ``main()`` runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from programs import plain
from queries import PROGRAMS

TIMEOUT = 90.0  # per program


LOCAL = "local"  # the ENDPOINT that means in-process


def model_name(endpoint: str, folder: str) -> str:
    """An ``http://.../v1`` endpoint is an OpenAI-compatible server (our ``openai:`` transport).
    ``COMPAT_SERVED_MODEL``: the name the server knows the model by, where not ``folder`` (which
    stays the tokenizer), e.g. ``llama.cpp:PATH.gguf``."""
    if endpoint == LOCAL:
        return f"local:{folder}"
    served = os.environ.get("COMPAT_SERVED_MODEL") or folder
    return f"openai:{served}" if endpoint.startswith("http") else served


def model_arguments(endpoint: str, folder: str) -> dict[str, str]:
    return {} if endpoint == LOCAL else {"endpoint": endpoint, "tokenizer": folder}


def model_expression(endpoint: str, folder: str) -> str:
    arguments = "".join(f", {k}={v!r}" for k, v in model_arguments(endpoint, folder).items())
    return f"lmql.model({model_name(endpoint, folder)!r}{arguments})"


async def run_query(program: dict[str, Any], endpoint: str, folder: str) -> Any:
    import lmql

    source = program["lmql"]
    inputs = dict(program.get("inputs", {}))
    if "<MODEL>" in source:
        source = source.replace("<MODEL>", model_expression(endpoint, folder))
    else:
        inputs["model"] = lmql.model(model_name(endpoint, folder), **model_arguments(endpoint, folder))
    return await lmql.run(source, **inputs)


async def run_python(program: dict[str, Any], endpoint: str, folder: str, modules: Path) -> Any:
    """Import the program as a module (``lmql`` and ``MODEL`` defined first) and call ``main``."""
    name = f"query_program_{program['name']}"
    header = f"import lmql\nMODEL = {model_expression(endpoint, folder)}\n"
    path = modules / f"{name}.py"
    path.write_text(header + program["python"], encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if inspect.iscoroutinefunction(module.main):
        return await module.main()
    return await asyncio.to_thread(module.main)  # a sync query blocks: not on this event loop


async def run_one(program: dict[str, Any], endpoint: str, folder: str, modules: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"check": program["name"]}
    start = time.monotonic()
    try:
        if "lmql" in program:
            result = run_query(program, endpoint, folder)
        else:
            result = run_python(program, endpoint, folder, modules)
        record["result"] = plain(await asyncio.wait_for(result, TIMEOUT))
    except asyncio.TimeoutError:
        record["error"] = f"no answer in {TIMEOUT:.0f} s"
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()[-2000:]
    record["seconds"] = round(time.monotonic() - start, 2)
    return record


async def main(endpoint: str, folder: str, selection: list[str]) -> int:
    only = {s for s in selection if not s.startswith("-")}
    skip = {s[1:] for s in selection if s.startswith("-")}
    planned = [p for p in PROGRAMS if (not only or p["name"] in only) and p["name"] not in skip]
    print("COMPAT_PLAN " + json.dumps([p["name"] for p in planned]), flush=True)
    with tempfile.TemporaryDirectory(prefix="lmql-query-programs-") as modules:
        for program in planned:
            print("COMPAT " + json.dumps(await run_one(program, endpoint, folder, Path(modules))), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: query_programs.py ENDPOINT MODEL_DIR [NAME | -NAME ...]")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:])))
