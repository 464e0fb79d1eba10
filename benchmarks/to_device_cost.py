"""What a small host list's copy to the GPU costs the host while the device is busy (issue 31 (a):
the engine thread's ``TorchOps.to_device`` was 28% of its time in a constrained window).

    python benchmarks/to_device_cost.py [--calls 4000] [--size 64]

Each variant is called ``--calls`` times while the GPU runs queued matrix products (the host
stays ahead of the device, as the engine's launched-ahead steps keep it); printed: µs a call on
the host (median of 5 runs). Variants: ``TorchOps.tensor`` as it is (pin a fresh copy, then copy
it without blocking), its two halves, a staging ring of pinned memory (``PinnedRing``), and a
blocking copy for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from lmql_core.base.array_ops import TorchOps  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda")
    ops = TorchOps()
    work = torch.randn(2048, 2048, device=device)
    values = list(range(args.size))
    kept: list[torch.Tensor] = []

    def busy() -> None:  # ~1 ms of queued device work, so the host runs ahead
        for _ in range(4):
            work.matmul(work)

    long = torch.long
    variants = {
        "pin a fresh copy, copy it without blocking (before)": lambda: torch.tensor(values, dtype=long)
        .pin_memory().to(device, non_blocking=True),
        "pin a fresh copy only": lambda: torch.tensor(values, dtype=long).pin_memory(),
        "TorchOps.tensor (through PinnedRing)": lambda: ops.tensor(values, device, long),
        "torch.tensor(device=cuda) (blocking)": lambda: torch.tensor(values, dtype=long, device=device),
    }
    for name, call in variants.items():
        runs = []
        for _ in range(5):
            torch.cuda.synchronize()
            spent = 0.0
            for i in range(args.calls):
                if i % 10 == 0:
                    busy()
                started = time.perf_counter()
                kept.append(call())
                spent += time.perf_counter() - started
                if len(kept) > 64:
                    kept.clear()
            torch.cuda.synchronize()
            runs.append(spent / args.calls * 1e6)
        print(f"| {name} | {statistics.median(runs):.1f} | {min(runs):.1f} | {max(runs):.1f} |", flush=True)


if __name__ == "__main__":
    main()
