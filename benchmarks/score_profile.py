"""Where a served SCORE batch's host time goes, on the CPU: cProfile of the engine thread and of
the server's event loop while ``lmtp_load`` (another process) sends SCORE requests.

    python benchmarks/score_profile.py [--model lmql-tiny] [--streams 64] [--prompt-len 256]
        [--score 16] [--runs 5] [--top 25] [SERVER OPTION=VALUE ...]

Prints each run's time (the first one included in the profile), then per thread the functions
with the most time of their own and the busiest by time inclusive. On the CPU the model's own
work is part of the engine thread's time: compare functions outside the forward pass (``forward``
of torch modules) between versions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmql_core.engine.engine import Engine
from lmql_core.serving.run import RunningServer, serve

HERE = Path(__file__).resolve().parent
PROFILES = {"engine": cProfile.Profile(), "event loop": cProfile.Profile()}


def profiled(method: Any, profile: cProfile.Profile) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        profile.enable()
        try:
            return method(*args, **kwargs)
        finally:
            profile.disable()
    return run


def load(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "lmtp_load.py"), "--endpoint", endpoint, "--model", args.model,
               "--streams", str(args.streams), "--prompt-len", str(args.prompt_len),
               "--score", str(args.score), "--no-warmup", "--json"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lmql-tiny")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--score", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="/tmp", help="where each thread's profile is written (.prof)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="time the runs only (cProfile slows Python-heavy code several times)")
    args, rest = parser.parse_known_args()
    options = dict(option.split("=", 1) for option in rest)
    if args.profile:
        Engine._run = profiled(Engine._run, PROFILES["engine"])  # type: ignore[method-assign]
        RunningServer._run_in_thread = profiled(  # type: ignore[method-assign]
            RunningServer._run_in_thread, PROFILES["event loop"])
    server = serve(args.model, port=0, background=True, **options)
    assert server is not None
    with server:
        for _ in range(args.runs):
            result = load(server.endpoint, args)
            print(f"run: {result['seconds']} s, {result['req_per_s']} requests/s")
    for name, profile in PROFILES.items() if args.profile else ():
        print(f"\n=== {name} thread ===")
        profile.dump_stats(Path(args.out, f"score_profile_{name.replace(' ', '_')}.prof"))
        stats = pstats.Stats(profile).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
