"""LMTP load driver: N concurrent streams over one websocket; prints tok/s, TTFT and ITL.

    python benchmarks/lmtp_load.py --endpoint localhost:8080 --model lmql-tiny --streams 64 \
        --prompt-len 16 --new-tokens 128 [--stagger-ms 20] [--local] [--repeat-prompts]
    python benchmarks/lmtp_load.py ... --streams 256 --prompt-len 100-1024 --new-tokens 100-1024
    python benchmarks/lmtp_load.py ... --streams 64 --prompt-len 256 --score 16      (SCORE requests)
    python benchmarks/lmtp_load.py ... --openai      (the same requests through OpenAI's HTTP API)
    python benchmarks/lmtp_load.py ... --openai --processes 4   (the streams shared by 4 driver processes)

Every stream sends a random prompt and asks for exactly --new-tokens tokens (EOS is banned with
a -100 logit bias, which LMQL's server honours too); a range A-B draws each stream's length
uniformly from it. Prompts are drawn fresh for every run, so no prefix cache can help; with
--repeat-prompts (or --seed N) they are the same in every run. The warm-up requests (off with
--no-warmup) use prompts of their own. With --score N every stream is a SCORE of N random tokens
after its prompt instead, and req_per_s counts them. With --local the same requests go to an
in-process engine (`local:` transport) instead of a socket; with --openai, as streamed
`/v1/completions` requests on the same server (`openai_target.py`: connections kept alive and
reused, as the official `openai` client's pool does; --fresh-connections: one per stream). With
--processes N the streams are split between N driver processes started together
(`load_workers.py`), so that the driver is not what limits the rate; driver_cpu_s is the
drivers' CPU during the measured part.
This file is the command line; one run is `load_run.py`, its targets `load_targets.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import load_workers
from load_run import draw_requests, prompt_rng, run, summary

__all__ = ["draw_requests", "main", "parse_args", "prompt_rng", "run", "run_within", "summary"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:8080")
    parser.add_argument("--model", default="lmql-tiny")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--prompt-len", default="16", help="N, or A-B: each stream's drawn uniformly")
    parser.add_argument("--new-tokens", default="128", help="N, or A-B: each stream's drawn uniformly")
    parser.add_argument("--score", type=int, default=0, metavar="N",
                        help="SCORE requests of N random tokens after the prompt instead of GENERATE")
    parser.add_argument("--requests-per-stream", type=int, default=1,
                        help="requests each stream sends one after another (a closed loop; 1: a burst)")
    parser.add_argument("--stagger-ms", type=float, default=0.0, help="delay between stream starts")
    parser.add_argument("--local", action="store_true", help="in-process engine instead of a socket")
    parser.add_argument("--openai", action="store_true", help="OpenAI's HTTP API on the same server")
    parser.add_argument("--fresh-connections", action="store_true",
                        help="with --openai: a new connection per stream (default: kept alive and reused)")
    parser.add_argument("--cuda", action="store_true", help="with --local: load the model on the GPU")
    parser.add_argument("--dtype", help="with --local: the weights' dtype (float16, ...)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--vocab-size", type=int, default=50257, help="when MODEL_INFO does not say")
    parser.add_argument("--eos-token-id", type=int, help="when MODEL_INFO does not say (LMQL 0.7)")
    parser.add_argument("--seed", type=int, help="draw the prompts from this seed (the same every run)")
    parser.add_argument("--repeat-prompts", action="store_true",
                        help="the same prompts in every run (seed 0 unless --seed); default: fresh ones")
    parser.add_argument("--processes", type=int, default=1, help="driver processes sharing the streams")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --processes
    parser.add_argument("--first-stream", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--timeout", type=float, help="seconds for the whole run (TimeoutError after)")
    return parser.parse_args(argv)


async def run_within(args: argparse.Namespace) -> dict[str, Any]:
    return await asyncio.wait_for(run(args), args.timeout)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker or args.processes > 1:
        if args.worker:
            return load_workers.worker(args)
        streams, elapsed, cpu = load_workers.run_workers(args, sys.argv[1:] if argv is None else argv)
        result = summary(args, streams, elapsed, cpu)
    else:
        result = asyncio.run(run_within(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
