"""CPU per generated token, server and load driver, for LMTP and OpenAI's streamed
``/v1/completions`` on one server (issue 29's CPU proxy for the GPU point).

    python benchmarks/openai_cpu_cost.py [--model lmql-tiny|gpt2-micro] [--streams 64] [--rounds 2] [ARG ...]

Starts ``lmql serve-model MODEL``, then runs ``lmtp_load.py`` (a child process) with and without
``--openai`` in turns; for each run prints tok/s, the server's CPU seconds per token (from
/proc/PID/stat, before and after the run; the driver's warm-up tokens included, 64 x 4 at 64
streams), the part of it on the server's event loop (its main thread: transports, encoding),
and the driver's (its processes' CPU while the measured streams ran). ``--processes N``: the
OpenAI driver's streams split between N processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import FOLDERS, bench_model  # noqa: E402
from processes import free_port, start_server  # noqa: E402


def cpu_seconds(pid: int, thread: int | None = None, system: bool = True) -> float:
    """User + system CPU of a process, its threads included (or of one of its threads); with
    ``system`` False, user time only."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + system * int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(endpoint: str, args: argparse.Namespace, openai: bool, server_pid: int) -> dict[str, float]:
    command = [sys.executable, str(HERE / "lmtp_load.py"), "--endpoint", endpoint, "--model", args.model,
               "--streams", str(args.streams), "--new-tokens", str(args.new_tokens), "--json",
               *(["--openai", "--processes", str(args.processes)] if openai else [])]
    server_before, loop_before = cpu_seconds(server_pid), cpu_seconds(server_pid, server_pid)
    loop_user_before = cpu_seconds(server_pid, server_pid, system=False)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    server_cpu = cpu_seconds(server_pid) - server_before
    loop_cpu = cpu_seconds(server_pid, server_pid) - loop_before  # the main thread: the event loop
    # its user time: the interpreter's work (the rest is the kernel's, mostly the sockets' writes)
    loop_user = cpu_seconds(server_pid, server_pid, system=False) - loop_user_before
    result = json.loads(out.strip().splitlines()[-1])
    tokens = result["tokens"] + args.streams * min(4, args.new_tokens)  # the warm-up's too
    return {"tok_per_s": result["tok_per_s"], "server_us_per_token": 1e6 * server_cpu / tokens,
            "server_loop_us_per_token": 1e6 * loop_cpu / tokens,
            "server_loop_user_us_per_token": 1e6 * loop_user / tokens,
            "driver_us_per_token": 1e6 * result["driver_cpu_s"] / result["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lmql-tiny")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="the OpenAI driver's client processes")
    args, server_args = parser.parse_known_args()
    if args.model in FOLDERS:  # a benchmark model (built from its config): served from its folder
        args.model = str(bench_model(args.model).folder)
    port = free_port()
    command = [sys.executable, "-m", "lmql_core", "serve-model", args.model, "--port", str(port),
               *server_args]
    server = start_server(command, port, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results: dict[str, list[dict[str, float]]] = {"lmtp": [], "openai": []}
    try:
        for _ in range(args.rounds):
            for transport, rows in results.items():
                row = run_load(f"127.0.0.1:{port}", args, transport == "openai", server.pid)
                rows.append(row)
                print(json.dumps({"transport": transport, **{k: round(v, 1) for k, v in row.items()}}),
                      flush=True)
    finally:
        server.terminate()
        server.wait(60)
    medians = {t: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for t, rows in results.items()}
    lmtp, openai = medians["lmtp"], medians["openai"]
    print(f"{args.model} {args.streams} streams (medians): tok/s LMTP {lmtp['tok_per_s']:,.0f}, OpenAI "
          f"{openai['tok_per_s']:,.0f} ({openai['tok_per_s'] / lmtp['tok_per_s']:.2f}x); "
          f"server us/token LMTP "
          f"{lmtp['server_us_per_token']:.0f}, OpenAI {openai['server_us_per_token']:.0f} "
          f"({openai['server_us_per_token'] / lmtp['server_us_per_token']:.2f}x), of which the event loop "
          f"LMTP {lmtp['server_loop_us_per_token']:.0f}, OpenAI {openai['server_loop_us_per_token']:.0f} "
          f"(user time LMTP {lmtp['server_loop_user_us_per_token']:.0f}, "
          f"OpenAI {openai['server_loop_user_us_per_token']:.0f}); "
          f"driver us/token LMTP "
          f"{lmtp['driver_us_per_token']:.0f}, OpenAI {openai['driver_us_per_token']:.0f}")


if __name__ == "__main__":
    main()
