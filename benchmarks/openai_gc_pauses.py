"""The garbage collector's pauses under many short OpenAI requests (issue 29): each source tree
serves the model in turn, gets ``--requests`` one-token ``/v1/completions`` requests in bursts of
64 on kept-alive connections, and its ``/metrics`` tell the collections and their seconds per
generation during them, beside the event loop's CPU per request (/proc schedstat). A collection
holds the interpreter's lock: every thread of the server, the engine's too, waits it out.

    python benchmarks/openai_gc_pauses.py TREE [TREE ...] [--rounds 3] [--requests 6400]

A tree is a folder with ``src`` and ``plugins/hf/src`` (``git archive COMMIT src plugins/hf/src``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import bench_model  # noqa: E402
from load_targets import run_stream  # noqa: E402
from openai_ab import cpu_ns  # noqa: E402
from openai_request_cost import serve  # noqa: E402
from openai_target import OpenAITarget  # noqa: E402

BURST = 64


def gc_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(("lmql_gc_pause_seconds_total", "lmql_gc_collections_total"))}


async def requests(port: int, model: str, count: int) -> None:
    request = {"model": model, "prompt": list(range(100, 116)), "max_tokens": 1, "temperature": 0.0,
               "top_logprobs": 1}
    target = OpenAITarget(f"127.0.0.1:{port}", keep_alive=True)
    for _ in range(max(1, count // BURST)):
        await asyncio.gather(*(run_stream(target, i, request, 0) for i in range(BURST)))
    await target.__aexit__()


def measure(tree: Path, model: str, count: int) -> str:
    server, port = serve(tree, model)
    try:
        asyncio.run(requests(port, model, BURST))  # opens the connections
        before, cpu, started = gc_metrics(port), cpu_ns(server.pid, server.pid), time.perf_counter()
        asyncio.run(requests(port, model, count))
        wall, cpu = time.perf_counter() - started, cpu_ns(server.pid, server.pid) - cpu
        after = gc_metrics(port)
    finally:
        server.terminate()
        server.wait(60)
    pauses = [after.get(f'lmql_gc_pause_seconds_total{{generation="{g}"}}', 0.0)
              - before.get(f'lmql_gc_pause_seconds_total{{generation="{g}"}}', 0.0) for g in range(3)]
    counts = [after.get(f'lmql_gc_collections_total{{generation="{g}"}}', 0.0)
              - before.get(f'lmql_gc_collections_total{{generation="{g}"}}', 0.0) for g in range(3)]
    per_generation = " / ".join(f"{n:.0f} in {s * 1e3:.0f} ms" for n, s in zip(counts, pauses, strict=True))
    return (f"{tree}: {count} requests in {wall:.2f} s; loop {cpu / count / 1e3:.0f} us/request; "
            f"collections gen 0/1/2: {per_generation}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--model", default="gpt2-micro-50k")
    args = parser.parse_args()
    model = str(bench_model(args.model).folder)
    for _ in range(args.rounds):
        for tree in args.trees:
            print(measure(tree.resolve(), model, args.requests), flush=True)


if __name__ == "__main__":
    main()
