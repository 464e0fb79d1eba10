"""Issue 29's GPU point: the same load through LMTP and through OpenAI's HTTP API on one server.

    python benchmarks/openai_vs_lmtp.py [--model gpt2-medium] [--streams 64] [--rounds 2] [--processes 4]
        [--openai-events-per-s N] [--fresh-connections] [--openai-processes N]

Starts ``lmql serve-model`` on the model (built from its config, nothing downloads; ``--cuda``
when a GPU is there), then runs ``lmtp_load.py`` with and without ``--openai`` in turns, fresh
prompts each run, and prints tok/s per transport and the OpenAI/LMTP ratio. The OpenAI load
comes from ``--processes`` driver processes (64 HTTP streams read by one Python process cost it
more than the server; LMTP's one websocket is read by one), each run's driver CPU printed too;
their connections are kept alive and reused, as the official ``openai`` client's pool does (the
warm-up opens them), or with ``--fresh-connections`` one per stream. ``--openai-processes N``:
the server serves OpenAI's API from N front-end processes (its ``--openai-processes``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lmtp_load  # noqa: E402
from bench_models import bench_model  # noqa: E402
from processes import free_port, start_server  # noqa: E402
from stack_sampler import wrapped  # noqa: E402


def load(endpoint: str, model: str, streams: int, vocab: int, eos: int | None, openai: bool,
         processes: int, fresh_connections: bool = False, requests: int = 1) -> dict[str, float]:
    argv = ["--endpoint", endpoint, "--model", model, "--streams", str(streams), "--prompt-len", "16",
            "--new-tokens", "128", "--vocab-size", str(vocab), "--requests-per-stream", str(requests),
            "--json"]
    argv += ["--eos-token-id", str(eos)] if eos is not None else []
    argv += ["--openai", "--processes", str(processes)] if openai else []
    argv += ["--fresh-connections"] if openai and fresh_connections else []
    return lmtp_load.main(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-medium")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=4, help="the OpenAI load's driver processes")
    parser.add_argument("--openai-events-per-s", type=float, help="the server's pacing (default: its own)")
    parser.add_argument("--requests-per-stream", type=int, default=1,
                        help="each stream's requests, one after another (default 1: one burst of streams)")
    parser.add_argument("--fresh-connections", action="store_true",
                        help="the OpenAI load opens a connection per stream (default: kept alive, reused)")
    parser.add_argument("--openai-processes", type=int, default=0,
                        help="the server's OpenAI front-end processes (default 0: its event loop serves it)")
    parser.add_argument("--sample-stacks", type=Path, metavar="DIR",
                        help="sample the server's threads over each run (stack_sampler.py): DIR/window-N.txt")
    args = parser.parse_args()
    import torch

    model = bench_model(args.model)
    device = ["--cuda", "--dtype", model.dtype] if torch.cuda.is_available() else []
    port = free_port()
    events_per_s = args.openai_events_per_s
    pacing = [] if events_per_s is None else ["--openai-events-per-s", f"{events_per_s:g}"]
    pacing += ["--openai-processes", str(args.openai_processes)] if args.openai_processes else []
    sampler, profile = wrapped(args.sample_stacks)
    command = [sys.executable, *sampler, "-m", "lmql_core", "serve-model", str(model.folder),
               "--port", str(port), *device, *pacing]
    server = start_server(command, port, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(args.openai_processes):  # new connections go round the front-ends: each has started
        urllib.request.urlopen(f"http://localhost:{port}/v1/models", timeout=300).read()
    try:
        endpoint, vocab = f"localhost:{port}", model.config()["vocab_size"]
        results: dict[str, list[float]] = {"lmtp": [], "openai": []}
        for _ in range(args.rounds):
            for transport in results:
                profile()
                result = load(endpoint, str(model.folder), args.streams, vocab, model.eos_token_id(),
                              transport == "openai", args.processes, args.fresh_connections,
                              args.requests_per_stream)
                profile()
                results[transport].append(float(result["tok_per_s"]))
                row = {"transport": transport, "streams": args.streams, "tok_per_s": result["tok_per_s"],
                       "processes": result["processes"], "driver_cpu_s": result["driver_cpu_s"],
                       **{k: result[k] for k in ("ttft_median_ms", "ttft_p90_ms", "last_sent_ms",
                                                 "last_first_token_ms", "first_end_ms", "last_end_ms")}}
                print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(60)
    lmtp, openai = (statistics.median(results[t]) for t in ("lmtp", "openai"))
    frontends = f", {args.openai_processes} front-end processes" if args.openai_processes else ""
    print(f"{args.model} {args.streams} streams x {args.requests_per_stream} requests{frontends}: "
          f"LMTP {lmtp:,.0f} tok/s, OpenAI {openai:,.0f} tok/s, OpenAI/LMTP {openai / lmtp:.2f}")


if __name__ == "__main__":
    main()
