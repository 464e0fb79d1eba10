"""LMQL 0.7.3 compatibility: the same client programs against LMQL 0.7.3's server and ours.

    python tests/compat/run_compat.py --lmql-python <LMQL 0.7.3 venv>/bin/python [--random-model]

Run with lmql-core's Python (``nox -s compat`` sets both environments up). Builds a model folder
(``build_model.py``), starts LMQL 0.7.3's ``lmql serve-model`` and ours on free loopback ports,
runs ``programs.py`` with LMQL 0.7.3's client and with ours against both, prints a table and
exits non-zero on any mismatch. Deterministic results (greedy text, scores within 1e-3) must be
identical; sampled ones must have the right shape. The LMQL programs of ``queries.py`` also run
with our runtime on ``local:`` (the model in-process), against LMQL 0.7.3's results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comparison import (  # noqa: F401  (compare, same, EXPECTED_ERRORS: read through this module too)
    EXPECTED_ERRORS,
    Row,
    compare,
    one_sided,
    print_table,
    same,
    sampled_queries,
    sampled_texts,
    show_failures,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: server_process, which the test fixtures use too
from server_process import ServerProcess, free_port  # noqa: E402

PROGRAM_TIMEOUT = 1200


class Server(ServerProcess):
    """A ``lmql serve-model`` (LMQL 0.7.3's or ours) on a free loopback port."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        port = free_port()
        super().__init__(name, [*command, "--port", str(port), "--host", "127.0.0.1"], port, env, log)

    def wait_loaded(self, model: str, timeout: float = 300) -> None:
        """Until MODEL_INFO describes the loaded model. LMQL's server listens before it loads, and
        if loading fails it stays up and never answers generation requests."""
        self.wait_ready(lambda: self.describes(model), timeout, poll=0.5,
                        failed=lambda output: "Exception in thread" in output)  # LMQL's: the model did not load

    def describes(self, model: str) -> bool:
        with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
            return isinstance(asyncio.run(model_info(self.endpoint, model)), dict)
        return False


async def model_info(endpoint: str, model: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://{endpoint}/") as ws:
        await ws.send_str("MODEL_INFO " + json.dumps({"stream_id": 1, "model": model, "data": {}}))
        msg = await asyncio.wait_for(ws.receive(), 5)
        return json.loads(msg.data.split(" ", 1)[1])[0].get("model_info")


@dataclass
class ProgramRun:
    """One run of the check script: what it planned, what it recorded, how it exited."""

    label: str
    records: dict[str, dict[str, Any]]
    planned: list[str] | None  # None: it never said (it crashed first)
    returncode: int | None  # None: killed after PROGRAM_TIMEOUT

    def names(self) -> list[str]:
        """Every check it planned or recorded: a crash leaves the planned ones unrecorded."""
        return list(dict.fromkeys([*(self.planned or []), *self.records]))

    @property
    def complete(self) -> bool:
        return self.returncode == 0 and self.planned is not None and set(self.planned) <= set(self.records)


def run_programs(command: list[str], env: dict[str, str], log: Path, label: str) -> ProgramRun:
    """Run a check script; its COMPAT_PLAN and COMPAT lines, and its exit code."""
    returncode: int | None
    with log.open("w") as err:
        try:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                  timeout=PROGRAM_TIMEOUT)
            stdout, returncode = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            returncode = None
    records, planned = {}, None
    for line in stdout.splitlines():
        if line.startswith("COMPAT_PLAN "):
            planned = list(json.loads(line[len("COMPAT_PLAN "):]))
        elif line.startswith("COMPAT "):
            record = json.loads(line[len("COMPAT "):])
            records[record["check"]] = record
    return ProgramRun(label, records, planned, returncode)


def script_row(run: ProgramRun) -> Row:
    """A row for the run itself: it must exit 0 having recorded every check it planned."""
    planned = "?" if run.planned is None else str(len(run.planned))
    exit_code = "timed out" if run.returncode is None else f"exit {run.returncode}"
    summary = {"result": f"{exit_code}, {len(run.records)} of {planned} checks recorded"}
    return Row("check scripts", run.label, None, summary, run.complete, "exit")


# --- the run ------------------------------------------------------------------------------------

SAMPLED = {"query_sample": sampled_queries, "query_sample_default": sampled_queries, "sample": sampled_texts}
# equal, and long enough to need a second request to LMQL's server (it stops at 32 by default)
CHECKED = {"generate_to_eos": lambda result: result["tokens"] > 32}


def build_rows(lmql_theirs: ProgramRun, lmql_ours: ProgramRun, core_theirs: ProgramRun,
               core_ours: ProgramRun) -> list[Row]:
    """Every check planned or recorded by either side of a comparison gets a row: one that did
    not run (a crash) fails; so does each script run that did not exit 0 with all its checks."""
    rows = [script_row(run) for run in (lmql_theirs, lmql_ours, core_theirs, core_ours)]
    section = "LMQL 0.7.3 client: LMQL 0.7.3 server vs lmql-core server"
    for check in dict.fromkeys([*lmql_theirs.names(), *lmql_ours.names()]):
        if check == "error_unserved_model":
            rows.append(one_sided(section, check, lmql_ours.records.get(check), lambda r: r["raised"] is not None))
        else:
            rows.append(compare(section, check, lmql_theirs.records.get(check), lmql_ours.records.get(check),
                                SAMPLED.get(check), equal=check not in SAMPLED))
    section = "lmql-core client: LMQL 0.7.3 server vs lmql-core server"
    for check in dict.fromkeys([*core_theirs.names(), *core_ours.names()]):
        rows.append(compare(section, check, core_theirs.records.get(check), core_ours.records.get(check),
                            SAMPLED.get(check) or CHECKED.get(check), equal=check not in SAMPLED))
    section = "LMQL 0.7.3 client on its server vs lmql-core client on ours"
    for check in ("generate", "generate_40", "score"):
        rows.append(compare(section, check, lmql_theirs.records.get(check), core_ours.records.get(check)))
    return rows


def query_rows(server: str, theirs: ProgramRun, ours: ProgramRun,
               expected: dict[str, tuple[Callable[[Any], bool] | None, bool]]) -> list[Row]:
    """The LMQL programs of ``queries.py`` run by each runtime against one server: a row each."""
    section = f"LMQL programs on {server}: LMQL 0.7.3 runtime vs lmql-core runtime"
    rows = [script_row(theirs), script_row(ours)]
    for check in dict.fromkeys([*theirs.names(), *ours.names()]):
        shape, equal = expected.get(check, (None, True))
        rows.append(compare(section, check, theirs.records.get(check), ours.records.get(check), shape, equal))
    return rows


def identity_rows(on: ProgramRun, off: ProgramRun,
                  expected: dict[str, tuple[Callable[[Any], bool] | None, bool]]) -> list[Row]:
    """Issue 31's identity: our runtime on our server with constraints enforced on the server
    (templates, grammars) and forced onto the client (LMQL_SERVER_CONSTRAINTS=off, LMQL 0.7.3's
    way): greedy results identical, sampled ones of the right shape."""
    section = "lmql-core runtime on lmql-core server: server-side vs client-side constraints"
    rows = [script_row(off)]
    for check in dict.fromkeys([*on.names(), *off.names()]):
        shape, equal = expected.get(check, (None, True))
        rows.append(compare(section, check, on.records.get(check), off.records.get(check), shape, equal))
    return rows


def run_queries(python: str, side: str, server: Server, folder: Path, env: dict[str, str], work: Path) -> ProgramRun:
    label = f"{side} runtime, LMQL programs on {server.name}"
    t0 = time.monotonic()
    command = [python, str(HERE / "query_programs.py"), server.endpoint, str(folder)]
    run = run_programs(command, env, work / f"queries-{side}-{server.port}.log", label)
    print(f"ran {label}: {len(run.records)} programs in {time.monotonic() - t0:.1f} s "
          f"(exit {run.returncode})", flush=True)
    return run


def local_query_run(query_runs: list[tuple[str, ProgramRun, ProgramRun]], folder: Path, env: dict[str, str],
                    work: Path) -> tuple[str, ProgramRun, ProgramRun]:
    """Our runtime on ``local:FOLDER`` (one process, the model loaded once: ~15 s), against the
    LMQL 0.7.3 runtime's results on LMQL 0.7.3's server where it ran, else on ours."""
    by_server = {name: theirs for name, theirs, _ in query_runs}
    reference = by_server.get("LMQL 0.7.3 server") or next(iter(by_server.values()))
    label = "lmql-core runtime, LMQL programs on local: (in-process)"
    t0 = time.monotonic()
    command = [sys.executable, str(HERE / "query_programs.py"), "local", str(folder)]
    run = run_programs(command, env, work / "queries-lmql-core-local.log", label)
    print(f"ran {label}: {len(run.records)} programs in {time.monotonic() - t0:.1f} s "
          f"(exit {run.returncode})", flush=True)
    return f"local: (reference: {reference.label})", reference, run


def readme_backend_rows(lmql_python: str, ours_bin: str, env: dict[str, str], their_env: dict[str, str],
                        work: Path) -> list[Row]:
    """LMQL 0.7.3's client on the README's backend served by our ``lmql serve-model``: the
    results worked out by hand (``readme_backend.EXPECTED``) in the left column."""
    from readme_backend import EXPECTED, MODEL, with_plugin, write_byte_tokenizer

    tokenizer = write_byte_tokenizer(work / "byte-tokenizer")
    server = Server("README backend", [ours_bin, "serve-model", MODEL],
                    {**env, **with_plugin(work / "readme-plugin", env)}, work / "readme-server.log")
    try:
        server.wait_loaded(MODEL)
        command = [lmql_python, str(HERE / "programs.py"), "lmql-readme", server.endpoint, str(tokenizer)]
        run = run_programs(command, their_env, work / "readme-client.log", "LMQL 0.7.3 client on the README backend")
    finally:
        server.stop()
    section = f"LMQL 0.7.3 client on the README's backend (lmql serve-model {MODEL}): expected vs got"
    return [script_row(run), *(compare(section, check, {"result": expected}, run.records.get(check))
                               for check, expected in EXPECTED.items())]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmql-python", required=True, help="python of an environment with lmql==0.7.3")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--random-model", action="store_true", help="a seeded random model, not lmql-tiny")
    parser.add_argument("--queries-on", choices=("core", "both", "none"), default="both",
                        help="servers to run the LMQL programs of queries.py against (default: both); "
                             "unless none, our runtime also runs them on local:")
    args = parser.parse_args(argv)

    started = time.monotonic()
    work = (args.work or Path(tempfile.mkdtemp(prefix="lmql-compat-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HOME": str(work / "home"), "LMQL_CACHE_DIR": str(work / "cache"),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    (work / "home").mkdir(exist_ok=True)
    # PYTHONPATH may point at lmql-core's sources (a run by hand): never into LMQL 0.7.3's Python
    their_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}

    sys.path.insert(0, str(HERE))
    from build_model import build

    folder = work / "model"
    kind = build(folder, random=args.random_model)
    print(f"model: {folder} ({kind})")
    print(f"work folder: {work} (server logs, results.json)")

    lmql_bin = str(Path(args.lmql_python).parent / "lmql")
    ours_bin = str(Path(sys.executable).parent / "lmql")
    client_masks: ProgramRun | None = None
    servers = [Server("LMQL 0.7.3 server", [lmql_bin, "serve-model", str(folder)], their_env,
                      work / "lmql-server.log"),
               Server("lmql-core server", [ours_bin, "serve-model", str(folder)], env,
                      work / "core-server.log")]
    theirs, ours = servers
    try:
        for server in servers:
            server.wait_loaded(str(folder))
        print(f"servers: LMQL 0.7.3 on {theirs.endpoint}, lmql-core on {ours.endpoint}", flush=True)
        skip_core = ["-generate_to_eos"] if args.random_model else []  # a random model may never stop
        runs = {}
        for side, python in (("lmql", args.lmql_python), ("core", sys.executable)):
            for server, extra in ((theirs, ["-error_unserved_model"]), (ours, [])):
                label = f"{side} client on {server.name}"
                t0 = time.monotonic()
                selection = extra + (skip_core if side == "core" else [])
                command = [python, str(HERE / "programs.py"), side, server.endpoint, str(folder), *selection]
                side_env = their_env if side == "lmql" else env
                run = runs[side, server.name] = run_programs(command, side_env, work / f"{side}-{server.port}.log",
                                                             label)
                print(f"ran {label}: {len(run.records)} checks in {time.monotonic() - t0:.1f} s "
                      f"(exit {run.returncode})", flush=True)
        query_servers = {"core": [ours], "both": [ours, theirs], "none": []}[args.queries_on]
        if args.random_model:
            query_servers = []  # the programs' expectations (lists, bounds) assume lmql-tiny's text
        query_runs = [(server.name, run_queries(args.lmql_python, "LMQL 0.7.3", server, folder, their_env, work),
                       run_queries(sys.executable, "lmql-core", server, folder, env, work))
                      for server in query_servers]
        # one more pass of our runtime on our server, every constraint enforced by the client
        client_masks = run_queries(sys.executable, "lmql-core-client-masks", ours, folder,
                                   {**env, "LMQL_SERVER_CONSTRAINTS": "off"}, work) if ours in query_servers else None
    finally:
        for server in servers:
            server.stop()
    if query_runs:
        query_runs.append(local_query_run(query_runs, folder, env, work))

    every_run = [*runs.values(), *(run for _, *pair in query_runs for run in pair),
                 *([client_masks] if client_masks is not None else [])]
    (work / "results.json").write_text(json.dumps({run.label: vars(run) for run in every_run}, indent=1))
    rows = build_rows(runs["lmql", theirs.name], runs["lmql", ours.name],
                      runs["core", theirs.name], runs["core", ours.name])
    rows += readme_backend_rows(args.lmql_python, ours_bin, env, their_env, work)
    if query_runs:
        from query_compare import expectations

        expected = expectations(str(folder))
        for server_name, their_run, our_run in query_runs:
            rows += query_rows(server_name, their_run, our_run, expected)
            if server_name == ours.name and client_masks is not None:
                rows += identity_rows(our_run, client_masks, expected)
    print_table(rows)
    show_failures(rows)
    failed = [r for r in rows if not r.ok]
    if failed:
        for server in servers:
            print(f"\n--- {server.name} log (tail)\n{server.output(4000)}")
    print(f"\nLMQL 0.7.3 compatibility checks took {time.monotonic() - started:.0f} s")
    print(f"compat: {len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
