"""Leak or high-water mark? Runs the same attack on one server N times and prints its RSS after
each round, once it is idle again (issue 18, item 11). A leak grows with every round; a
high-water mark jumps in the first rounds and then stays.

    PYTHONPATH=src:plugins/hf/src:. python scripts/rss_plateau.py [--rounds 6] [--model lmql-tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from tests.attackers import health, open_websocket, send_frame
from tests.conftest import RawClient, Server


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_round(server: Server, model: str) -> None:
    stalled = [open_websocket(server.endpoint, rcvbuf=4096) for _ in range(4)]
    for sock in stalled:
        for sid in range(32):
            send_frame(sock, "GENERATE", {"model": model, "prompt": [1, 7 + sid], "stream_id": sid,
                                          "max_tokens": 65536, "top_logprobs": 100})
    async with RawClient(server.endpoint) as flood:
        for sid in range(1024):
            await flood.send("GENERATE", {"model": model, "prompt": [1 + sid % 500, 7], "stream_id": sid,
                                          "max_tokens": 100, "top_logprobs": 5})
        await flood.collect(set(range(1024)), timeout=600)
    for sock in stalled:
        sock.close()


def wait_idle(server: Server, model: str) -> None:
    while True:
        state = health(server.endpoint)
        if state["connections"] == 0 and state["models"][model]["active_sequences"] == 0:
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--model", default="lmql-tiny")
    args = parser.parse_args()
    server = Server(args.model, "--max-outgoing-bytes", "4000000")
    try:
        print(f"idle after start: {rss_mib(server.proc.pid):.0f} MiB")
        for n in range(1, args.rounds + 1):
            started = time.monotonic()
            asyncio.run(one_round(server, args.model))
            wait_idle(server, args.model)
            time.sleep(1)
            took = time.monotonic() - started
            print(f"idle after round {n} ({took:.0f} s): {rss_mib(server.proc.pid):.0f} MiB", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
