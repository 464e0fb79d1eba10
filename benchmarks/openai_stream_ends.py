"""When paced OpenAI streams end (issue 29): two source trees' servers on one model, the same
OpenAI load (64 streams, 4 driver processes) on each in turn; per run, the streams' ends after the
first request was sent, and each stream's last event's distance to the event before it (with
pacing, a last event that waited out the pause comes a whole pause after the one before).

    python benchmarks/openai_stream_ends.py BEFORE_TREE AFTER_TREE [--model gpt2-micro-50k]
        [--rounds 2] [SERVER ARG ...]      (e.g. --openai-events-per-s 300)

A tree is a folder with ``src`` and ``plugins/hf/src`` (``git archive COMMIT src plugins/hf/src``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lmtp_load  # noqa: E402
import load_workers  # noqa: E402
from bench_models import FOLDERS, bench_model  # noqa: E402
from load_targets import StreamTimes  # noqa: E402
from openai_ab import serve  # noqa: E402


def last_gap(times: StreamTimes) -> float:
    earlier = [a for a in times.arrivals if a < times.arrivals[-1]]
    return times.arrivals[-1] - (earlier[-1] if earlier else times.sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--model", default="gpt2-micro-50k")
    parser.add_argument("--rounds", type=int, default=2)
    args, server_args = parser.parse_known_args()
    model = str(bench_model(args.model).folder) if args.model in FOLDERS else args.model
    servers = [serve(tree.resolve(), model, server_args) for tree in args.trees]
    try:
        for _ in range(args.rounds):
            for (_, port), name in zip(servers, ("before", "after"), strict=True):
                argv = ["--endpoint", f"127.0.0.1:{port}", "--model", model, "--streams", "64",
                        "--new-tokens", "128", "--json", "--openai", "--processes", "4"]
                times, elapsed, _ = load_workers.run_workers(lmtp_load.parse_args(argv), argv)
                start = min(t.sent for t in times)
                ends = sorted(t.arrivals[-1] - start for t in times)
                gaps = sorted(1e3 * last_gap(t) for t in times)
                print(json.dumps({"server": name, "seconds": round(elapsed, 3),
                                  "ends_s": [round(e, 3) for e in (ends[0], ends[len(ends) // 2], ends[-1])],
                                  "last_event_gap_ms_median": round(gaps[len(gaps) // 2]),
                                  "last_event_gap_ms_max": round(gaps[-1])}), flush=True)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
