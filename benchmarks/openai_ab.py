"""Two servers' costs side by side (issue 29): the same model served by two source trees at once
(say, a commit before a change and after it), the same loads sent to each in turn, so that both
see the same load from the rest of the machine.

    python benchmarks/openai_ab.py BEFORE_TREE AFTER_TREE [--model gpt2-micro-50k] [--new-tokens 128]
        [--rounds 5] [--transports lmtp,openai] [--no-warmup] [SERVER ARG ...]

A tree is a folder with ``src`` and ``plugins/hf/src`` (e.g. ``git archive COMMIT src plugins/hf/src``
unpacked). Each load is ``lmtp_load.py`` at 64 streams (OpenAI's from 4 driver processes); around
it the server's CPU time is read from /proc's schedstat (nanoseconds; all threads, and the event
loop's: the main thread). Prints, per server and transport, the medians: tok/s, TTFT, the run's
seconds, server CPU per request and per token, and the event loop's. With ``--new-tokens 1
--no-warmup`` a load is a burst of 64 one-token requests, each on a new connection: what each
request costs the server (with the warm-up, on the warm-up's kept-alive connections).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import FOLDERS, bench_model  # noqa: E402
from processes import free_port, start_server  # noqa: E402

STREAMS = 64
COLUMNS = ("tok_per_s", "ttft_median_ms", "seconds", "server_us_per_request", "loop_us_per_request",
           "server_us_per_token", "loop_us_per_token")


def cpu_ns(pid: int, thread: int | None = None) -> int:
    """CPU nanoseconds of a process (all its threads) or of one of its threads."""
    tasks = [thread] if thread is not None else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0]) for t in tasks)


def one_load(port: int, pid: int, model: str, openai: bool, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, str(HERE / "lmtp_load.py"), "--endpoint", f"127.0.0.1:{port}",
               "--model", model, "--streams", str(STREAMS), "--new-tokens", str(args.new_tokens), "--json",
               *([] if args.warmup else ["--no-warmup"]),
               *(["--fresh-connections"] if args.fresh_connections else []),
               *(["--openai", "--processes", "4"] if openai else [])]
    server, loop = cpu_ns(pid), cpu_ns(pid, pid)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    server, loop = cpu_ns(pid) - server, cpu_ns(pid, pid) - loop
    result = json.loads(out.strip().splitlines()[-1])
    tokens = result["tokens"]
    return {"tok_per_s": result["tok_per_s"], "ttft_median_ms": result["ttft_median_ms"],
            "seconds": result["seconds"], "server_us_per_request": server / STREAMS / 1e3,
            "loop_us_per_request": loop / STREAMS / 1e3, "server_us_per_token": server / tokens / 1e3,
            "loop_us_per_token": loop / tokens / 1e3}


def serve(tree: Path, model: str, server_args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{tree / 'src'}:{tree / 'plugins/hf/src'}"}
    command = [sys.executable, "-m", "lmql_core", "serve-model", model, "--port", str(port), *server_args]
    return start_server(command, port, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--model", default="gpt2-micro-50k")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transports", default="lmtp,openai")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--fresh-connections", action="store_true",
                        help="OpenAI's load: a connection per stream (default: the warm-up's, kept alive)")
    args, server_args = parser.parse_known_args()
    model = str(bench_model(args.model).folder) if args.model in FOLDERS else args.model
    servers = [serve(tree.resolve(), model, server_args) for tree in args.trees]
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for (proc, port), name in zip(servers, ("before", "after"), strict=True):
                for transport in args.transports.split(","):
                    row = one_load(port, proc.pid, model, transport == "openai", args)
                    rows.setdefault((name, transport), []).append(row)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(60)
    for (name, transport), results in rows.items():
        medians: dict[str, Any] = {k: round(statistics.median(r[k] for r in results), 3) for k in COLUMNS}
        print(json.dumps({"server": name, "transport": transport, "runs": len(results), **medians}))


if __name__ == "__main__":
    main()
