"""Replicas on Ray Serve (lmql-ray): aggregate throughput and prefix-cache hit rate under LMQL-style
load, 1 vs 2 replicas, prefix-affinity routing vs round-robin.

The load: PROGRAMS concurrent "programs" over one LMTP connection; each runs ROUNDS requests whose
prompt grows as an LMQL program's does (the previous prompt, what was generated, a few new
template tokens); each round the programs' requests arrive in another order. The hit rate is the
prompt tokens the replicas did not recompute (``reused_prefix_tokens``) over the prompt tokens sent.

    python benchmarks/ray_replicas.py [--programs 16 --rounds 6 --tokens 16] [--cuda [--gpus-per-replica G]]
                                      [--direct]

``--direct`` adds a single ``lmql serve-model`` under the same load (no Ray): what the Ray path
costs. With ``--cuda``, the 2-replica rows need two GPUs, or ``--gpus-per-replica 0.5`` on one
(the replicas then share that GPU: their hit rates mean what they do on two, their throughput
does not).

Needs lmql-ray (plugins/ray) and starts `lmql serve-cluster` once per configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.ray.tests.cluster import Cluster, reused  # noqa: E402
from tests.conftest import RawClient, Server  # noqa: E402

MODEL = "lmql-tiny"
CONFIGS = (("1 replica", 1, "prefix"), ("2 replicas, prefix", 2, "prefix"),
           ("2 replicas, round-robin", 2, "round-robin"))
NO_EOS = {"2": -100}


def template(program: int, round_: int, length: int = 6) -> list[int]:
    rng = random.Random(program * 1000 + round_)
    return [rng.randrange(3, 2048) for _ in range(length)]


async def run_load(endpoint: str, programs: int, rounds: int, tokens: int) -> tuple[int, int, float]:
    """(prompt tokens sent, tokens generated, seconds)."""
    prompts = {p: [1, *template(p, -1, 40)] for p in range(programs)}
    sent = generated = 0
    began = time.perf_counter()
    async with RawClient(endpoint) as client:
        for round_ in range(rounds):
            # programs advance at their own pace: their requests arrive in a different order each round
            order = random.Random(round_).sample(sorted(prompts), len(prompts))
            for p in order:
                prompt = prompts[p]
                await client.send("GENERATE", {"model": MODEL, "stream_id": p, "prompt": prompt,
                                               "max_tokens": tokens, "temperature": 0, "logit_bias": NO_EOS})
                sent += len(prompt)
            answers = await client.collect(set(prompts), timeout=600)
            for p, entries in answers.items():
                assert all("error" not in e for e in entries), entries
                generated += len(entries)
                prompts[p] = prompts[p] + [e["token"] for e in entries] + template(p, round_)
    return sent, generated, time.perf_counter() - began


def measure(name: str, replicas: int, routing: str, args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--cuda", "--gpus-per-replica", str(args.gpus_per_replica)] if args.cuda else []
    cluster = Cluster(MODEL, "--routing", routing, *extra, replicas=replicas)
    try:
        before = sum(reused(r) for r in cluster.health().values())
        load = run_load(cluster.endpoint, args.programs, args.rounds, args.tokens)
        sent, generated, seconds = asyncio.run(load)
        hits = sum(reused(r) for r in cluster.health().values()) - before
    finally:
        cluster.stop()
    return row(name, sent, generated, seconds, hits)


def measure_direct(args: argparse.Namespace) -> dict[str, Any]:
    """The same load on one ``lmql serve-model`` (its reuse is not reported over HTTP: no hit rate)."""
    server = Server(MODEL, *(["--cuda"] if args.cuda else []))
    try:
        load = run_load(server.endpoint, args.programs, args.rounds, args.tokens)
        sent, generated, seconds = asyncio.run(load)
    finally:
        server.stop()
    return row("serve-model, no Ray", sent, generated, seconds, None)


def row(name: str, sent: int, generated: int, seconds: float, hits: int | None) -> dict[str, Any]:
    rate = "-" if hits is None else round(hits / sent, 3)
    return {"config": name, "tok/s": round(generated / seconds, 1), "prompt tokens": sent,
            "reused": "-" if hits is None else hits, "hit rate": rate, "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per request")
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--gpus-per-replica", type=float, default=1.0,
                        help="with --cuda (0.5: two replicas on one GPU)")
    parser.add_argument("--direct", action="store_true", help="also one `lmql serve-model`, no Ray")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = [measure_direct(args)] if args.direct else []
    rows += [measure(name, replicas, routing, args) for name, replicas, routing in CONFIGS]
    print("| config | tok/s | prompt tokens | reused | hit rate | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
