"""What a small host-to-GPU copy costs the host while the GPU is busy (issue 31: the engine
thread's index lists and feeds, a dozen a step):

    python benchmarks/h2d_costs.py [--copies 2000] [--ints 64]

Each variant copies ``--ints`` int64 values ``--copies`` times behind a queue of GPU work (large
matrix products, so the device stays seconds behind the host), and prints µs per copy on the
host: ``pin_memory().to(non_blocking)`` (a pinned block from torch's caching allocator each
time), ``IndexStaging`` (segments of one pinned arena), and a list used as an index (a blocking
copy: it waits for the queued work, so it runs once, after the queue).
"""

from __future__ import annotations

import argparse
import time

import torch

from lmql_core.base.index_staging import IndexStaging


def busy(device: torch.device) -> None:
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    for _ in range(200):
        a = a @ a
        a = a / a.norm()


def timed(copy, copies: int, values: list[int]) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(copies):
        copy(torch.tensor(values))
    return (time.perf_counter() - started) / copies * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2000)
    parser.add_argument("--ints", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda")
    values = list(range(args.ints))
    staging = IndexStaging(torch)
    x = torch.randn(256, 50257, device=device)
    variants = (("pin_memory().to(non_blocking)", lambda h: h.pin_memory().to(device, non_blocking=True)),
                ("IndexStaging", lambda h: staging.to_device(h, device)))
    for name, copy in variants:
        for _ in range(2):  # (the second: warm allocator)
            busy(device)
            us = timed(copy, args.copies, values)
            torch.cuda.synchronize()
        print(f"| {name} | {us:.1f} µs a copy |")
    busy(device)
    started = time.perf_counter()
    _ = x[values]
    print(f"| a list as the index, behind the queued work | {(time.perf_counter() - started) * 1e3:.1f} ms |")
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
