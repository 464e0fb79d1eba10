"""Which thread of a serving process holds the GIL, and in which functions, under LMTP load.

    python benchmarks/server_profile.py [--streams 64] [--runs 6] [--gil] [--openai] [SERVER ARG ...]

Starts ``lmql serve-model`` on the gpt2-medium-shaped model of gpu_bench (``--cuda --dtype
float16`` and any SERVER ARGs), samples it with py-spy while lmtp_load runs the workload
``--runs`` times, and prints each thread's share of the samples and its busiest functions. With
``--gil`` only the thread holding the GIL is sampled: the host time that serialises the steps.
With ``--openai`` the load is the same requests through OpenAI's HTTP API (4 driver processes).
Needs py-spy (``pip install py-spy``) and a CUDA GPU.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmtp_load  # noqa: E402
from gpu_bench import MODEL_DIR, build_model  # noqa: E402
from processes import free_port, start_server  # noqa: E402


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw format: ``thread;frame;...;frame count`` per line."""
    by_thread: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        by_thread[thread] += int(count)
        if frames:
            leaves[thread][frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[thread][frame] += int(count)
    total = sum(by_thread.values()) or 1
    for thread, samples in by_thread.most_common():
        print(f"\n{thread}: {100 * samples / total:.1f}% of samples")
        for title, counter in (("self", leaves[thread]), ("inclusive", inclusive[thread])):
            print(f"  {title}:")
            for frame, n in counter.most_common(top):
                print(f"    {100 * n / samples:5.1f}%  {frame[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--gil", action="store_true")
    parser.add_argument("--openai", action="store_true", help="the load through OpenAI's HTTP API")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default="/tmp", help="where the raw samples go")
    args, server_args = parser.parse_known_args()
    build_model()
    port = free_port()
    server = start_server([sys.executable, "-m", "lmql_core", "serve-model", str(MODEL_DIR), "--cuda",
                           "--dtype", "float16", "--port", str(port), *server_args], port)
    raw = Path(args.out, "server_profile.txt")
    load = ["--endpoint", f"127.0.0.1:{port}", "--model", str(MODEL_DIR), "--streams", str(args.streams),
            *(["--openai", "--processes", "4"] if args.openai else [])]
    try:
        lmtp_load.main(load)  # warm-up, unsampled
        beside = Path(sys.executable).with_name("py-spy")  # pip's script where PATH may not lead
        py_spy = str(beside) if beside.exists() else "py-spy"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(server.pid), "--rate", "1000", "--threads",
                                "--nonblocking", "--format", "raw", "--output", str(raw),
                                *(["--gil"] if args.gil else [])])
        time.sleep(1)
        for _ in range(args.runs):
            lmtp_load.main(load)
        spy.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.wait(timeout=60)
    finally:
        server.terminate()
        server.wait()
    summarize(raw, args.top)


if __name__ == "__main__":
    main()
