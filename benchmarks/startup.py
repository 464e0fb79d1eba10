"""Where a GPU server's start-up goes: time from launching ``lmql serve-model`` to accepting
connections, with the backend's own timings (weights, graph captures, warm-up) beside it, for
each model, started twice: first with an empty Triton cache (a fresh machine), then with the
cache the first start left (a later start on the same machine).

    python benchmarks/startup.py [--models gpt2-medium,llama-1b,qwen3-0.6b] [SERVER ARGS...]
    python benchmarks/startup.py --models qwen3-0.6b --py-spy FOLDER   # also where the time goes
    python benchmarks/startup.py --cpu --models lmql-tiny,gpt2-medium --starts 3   # no GPU

With --py-spy (py-spy installed), each start runs under ``py-spy record --format raw`` and leaves
its collapsed stacks in FOLDER (one file per start). With --cpu the servers load on the CPU in
float32 and every start is alike (no Triton cache). First it reports which of the big packages
have no cached bytecode: each start then compiles their sources again (7-9 s of each start-up
on the GPU image, benchmarks/RESULTS.md). --compile-bytecode first compiles site-packages as pip
does when it installs (into PYTHONPYCACHEPREFIX where that is set, e.g. for a read-only image).
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402
from processes import OFFLINE_ENV, free_port  # noqa: E402

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
TIMINGS = re.compile(r"(Loaded the weights|Captured \d+ CUDA graphs for \w+ \w+|Warmed up)\D*([\d.]+) s")


def start_once(command: list[str], env: dict[str, str], record: Path | None) -> tuple[float, list[str]]:
    port = free_port()
    lines: list[str] = []
    started = time.perf_counter()
    proc = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    spy = None
    if record:  # attached at once: py-spy writes its file when the server exits
        spy = subprocess.Popen([PY_SPY, "record", "--format", "raw", "--rate", "250", "--nonblocking",
                                "-o", str(record), "--pid", str(proc.pid)], stdout=subprocess.DEVNULL)
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
                                                          .splitlines()))
    reader.start()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}") from None
            time.sleep(0.1)
    ready = time.perf_counter() - started
    proc.terminate()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    if spy:
        spy.wait(timeout=60)
    return ready, [f"{m.group(1)} {m.group(2)} s" for line in lines if (m := TIMINGS.search(line))]


BIG_PACKAGES = ("torch", "transformers", "sympy", "numpy", "triton", "sklearn", "safetensors", "aiohttp")


def bytecode_report() -> str:
    """Per big package, the share of its sources without cached bytecode (as this interpreter,
    with this environment's PYTHONPYCACHEPREFIX, looks for it), and whether it writes bytecode."""
    parts = []
    for name in BIG_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        sources = [p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py")]
        missing = sum(not Path(importlib.util.cache_from_source(str(p))).exists() for p in sources)
        parts.append(f"{name} {missing}/{len(sources)}")
    writes = "no (PYTHONDONTWRITEBYTECODE)" if sys.dont_write_bytecode else "yes"
    return f"sources without cached bytecode: {', '.join(parts)}; writes bytecode: {writes}"


def compile_bytecode() -> None:
    began = time.perf_counter()
    for folder in dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")):
        compileall.compile_dir(folder, quiet=2, workers=os.cpu_count() or 1)
    print(f"compiled site-packages' bytecode in {time.perf_counter() - began:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gpt2-medium,llama-1b,qwen3-0.6b")
    parser.add_argument("--py-spy", type=Path, metavar="FOLDER", help="record each start with py-spy")
    parser.add_argument("--cpu", action="store_true", help="load on the CPU, in float32")
    parser.add_argument("--starts", type=int, default=2, help="starts per model")
    parser.add_argument("--compile-bytecode", action="store_true",
                        help="compile site-packages' bytecode first (as pip install does)")
    args, server_args = parser.parse_known_args()
    if args.compile_bytecode:
        print(bytecode_report(), flush=True)
        compile_bytecode()
    triton_cache = tempfile.mkdtemp(prefix="lmql-startup-triton-")
    env = {**os.environ, **OFFLINE_ENV, "TRITON_CACHE_DIR": triton_cache, "PYTHONUNBUFFERED": "1"}
    print(bytecode_report(), flush=True)
    print("| model | start | to accepting connections s | backend's parts |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        model = bench_model(name)
        device = ["--dtype", "float32"] if args.cpu else ["--cuda", "--dtype", model.dtype]
        command = [sys.executable, "-m", "lmql_core", "serve-model", str(model.folder), *device, *server_args]
        for number in range(1, args.starts + 1):
            start = (f"start {number}" if args.cpu
                     else "empty Triton cache" if number == 1 else "warm Triton cache")
            record = None
            if args.py_spy:
                args.py_spy.mkdir(parents=True, exist_ok=True)
                record = args.py_spy / f"{name}-{number}-{start.split()[0]}.txt"
            ready, parts = start_once(command, env, record)
            print(f"| {name} | {start} | {ready:.1f} | {'; '.join(parts)} |", flush=True)


if __name__ == "__main__":
    main()
