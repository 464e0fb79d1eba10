"""Where a GPU server's start-up goes: time from launching ``lmql serve-model`` to accepting
connections, with the backend's own timings (weights, graph captures, warm-up) beside it, for
each model, started twice: first with an empty Triton cache (a fresh machine), then with the
cache the first start left (a later start on the same machine).

    python benchmarks/startup.py [--models gpt2-medium,llama-1b,qwen3-0.6b] [SERVER ARGS...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402
from processes import OFFLINE_ENV, free_port, start_server  # noqa: E402

TIMINGS = re.compile(r"(Loaded the weights|Captured \d+ CUDA graphs for \w+ \w+|Warmed up)\D*([\d.]+) s")


def start_once(command: list[str], env: dict[str, str]) -> tuple[float, list[str]]:
    port = free_port()
    lines: list[str] = []
    started = time.perf_counter()
    proc = start_server([*command, "--port", str(port)], port, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
    ready = time.perf_counter() - started
    proc.terminate()
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
                                                          .splitlines()))
    reader.start()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return ready, [f"{m.group(1)} {m.group(2)} s" for line in lines if (m := TIMINGS.search(line))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gpt2-medium,llama-1b,qwen3-0.6b")
    args, server_args = parser.parse_known_args()
    triton_cache = tempfile.mkdtemp(prefix="lmql-startup-triton-")
    env = {**os.environ, **OFFLINE_ENV, "TRITON_CACHE_DIR": triton_cache, "PYTHONUNBUFFERED": "1"}
    print("| model | start | to accepting connections s | backend's parts |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        model = bench_model(name)
        command = [sys.executable, "-m", "lmql_core", "serve-model", str(model.folder), "--cuda",
                   "--dtype", model.dtype, *server_args]
        for start in ("empty Triton cache", "warm Triton cache"):
            ready, parts = start_once(command, env)
            print(f"| {name} | {start} | {ready:.1f} | {'; '.join(parts)} |", flush=True)


if __name__ == "__main__":
    main()
