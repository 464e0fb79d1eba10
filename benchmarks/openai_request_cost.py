"""What one streamed OpenAI request costs the server's event loop (issue 29): source trees served
side by side, bursts of 64 one-token ``/v1/completions`` requests sent to each in turn, on
connections kept alive (opened by a first burst, as the official client's pool keeps them) and on
new ones; the loop thread's CPU (/proc schedstat) per request, median (min, max) over the bursts.

    python benchmarks/openai_request_cost.py TREE [TREE ...] [--bursts 15] [--model gpt2-micro-50k]

A tree is a folder with ``src`` and ``plugins/hf/src`` (``git archive COMMIT src plugins/hf/src``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import bench_model  # noqa: E402
from load_targets import run_stream  # noqa: E402
from openai_ab import cpu_ns  # noqa: E402
from openai_target import OpenAITarget  # noqa: E402
from processes import free_port, start_server  # noqa: E402

STREAMS = 64


def serve(tree: Path, model: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{tree / 'src'}:{tree / 'plugins/hf/src'}"}
    command = [sys.executable, "-m", "lmql_core", "serve-model", model, "--port", str(port)]
    return start_server(command, port, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


async def burst(target: OpenAITarget, pid: int, request: dict[str, object]) -> float:
    """The loop's CPU microseconds per request of one burst."""
    before = cpu_ns(pid, pid)
    await asyncio.gather(*(run_stream(target, i, request, 0) for i in range(STREAMS)))
    await asyncio.sleep(0.05)  # the answers' ends handled
    return (cpu_ns(pid, pid) - before) / STREAMS / 1e3


async def measure(servers: list[tuple[Path, int, int]], model: str, bursts: int) -> None:
    request = {"model": model, "prompt": list(range(100, 116)), "max_tokens": 1, "temperature": 0.0,
               "top_logprobs": 1}
    targets = [(tree, keep, OpenAITarget(f"127.0.0.1:{port}", keep_alive=keep), pid)
               for tree, pid, port in servers for keep in (True, False)]
    for _, _, target, pid in targets:  # opens the kept-alive connections
        await burst(target, pid, request)
    costs: dict[int, list[float]] = {i: [] for i in range(len(targets))}
    for _ in range(bursts):
        for i, (_, _, target, pid) in enumerate(targets):
            costs[i].append(await burst(target, pid, request))
    for i, (tree, keep, target, _) in enumerate(targets):
        await target.__aexit__()
        got = costs[i]
        print(f"{tree} {'kept alive' if keep else 'new connections'}: loop us/request median "
              f"{statistics.median(got):.0f} (min {min(got):.0f}, max {max(got):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--bursts", type=int, default=15)
    parser.add_argument("--model", default="gpt2-micro-50k")
    args = parser.parse_args()
    model = str(bench_model(args.model).folder)
    started = [(tree, *serve(tree.resolve(), model)) for tree in args.trees]
    try:
        asyncio.run(measure([(tree, proc.pid, port) for tree, proc, port in started], model, args.bursts))
    finally:
        for _, proc, _ in started:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
