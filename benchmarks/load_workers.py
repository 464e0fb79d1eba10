"""``lmtp_load.py --processes N``: the streams split between N driver processes (one Python
process reading 64 HTTP streams can be slower than the server writing them).

Each worker (``lmtp_load.py --worker``) warms up, says it is ready, waits for the word to start,
runs its share of the streams and prints their times; perf_counter's clock is the system's
monotonic one, the same in every process, so the times merge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import load_run
from load_targets import StreamTimes

READY, GO = "ready", "go"


def worker(args: argparse.Namespace) -> dict[str, Any]:
    async def go() -> None:
        print(READY, flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != GO:
            raise SystemExit("the driver went away")

    result = asyncio.run(asyncio.wait_for(load_run.run(args, go), args.timeout))
    print(json.dumps(result), flush=True)
    return result


def shares(streams: int, processes: int) -> list[int]:
    return [streams // processes + (i < streams % processes) for i in range(processes)]


def worker_argv(argv: list[str], args: argparse.Namespace, index: int, streams: int, first: int) -> list[str]:
    """The driver's own arguments with this worker's share; a seed its own (no shared prompts)."""
    own = ["--worker", "--processes", "1", "--streams", str(streams), "--first-stream", str(first)]
    if args.seed is not None or args.repeat_prompts:
        own += ["--seed", str((args.seed or 0) * 1000 + index)]
    return [sys.executable, str(Path(__file__).with_name("lmtp_load.py")), *argv, *own]


def run_workers(args: argparse.Namespace,
                argv: list[str]) -> tuple[list[StreamTimes], float, float]:
    """The streams' times, the elapsed seconds (first stream sent to last token) and the
    workers' CPU seconds in the measured part."""
    workers, first = [], 0
    for index, streams in enumerate(shares(args.streams, args.processes)):
        command = worker_argv(argv, args, index, streams, first)
        workers.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        first += streams
    try:
        for proc in workers:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != READY:
                raise RuntimeError(f"a driver process failed to start (exit {proc.wait()})")
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(GO + "\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in workers]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    times = [StreamTimes(sent, arrivals) for r in results for sent, arrivals in r["streams"]]
    started = min(r["started"] for r in results)
    elapsed = max(t.arrivals[-1] for t in times) - started
    return times, elapsed, sum(r["cpu"] for r in results)
