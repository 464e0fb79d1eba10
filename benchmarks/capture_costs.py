"""What a decode bucket costs the first times it is used when its graph is not captured before
"Ready" (``--capture_all False``), on the GPU: the first step (eager at the bucket's shapes), the
second (the capture, then a replay), the third (a replay), and an eager step for comparison.

    python benchmarks/capture_costs.py [--model gpt2-medium] [--batches 2,4,8,16,32,64]

Each batch size's rows get a short prompt first (prompt passes are captured before Ready up to
256 tokens), then three decode steps, each timed alone (synchronized).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402

from lmql_core.base.backend import StepInput  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402


def timed_ms(backend: HFBackend, inputs: list[StepInput]) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    backend.forward(inputs)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gpt2-medium", choices=["gpt2-medium", "llama-1b", "qwen3-0.6b"])
    parser.add_argument("--batches", default="2,4,8,16,32,64")
    args = parser.parse_args()
    model = bench_model(args.model)
    started = time.perf_counter()
    backend = HFBackend(str(model.folder), cuda=True, dtype=model.dtype, capture_all=False)
    print(f"backend ready in {time.perf_counter() - started:.1f} s")
    print("| batch | prompt pass ms | 1st decode (eager) ms | 2nd (capture + replay) ms | 3rd (replay) ms |")
    print("| --- | --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batches.split(",")):
        ids = list(range(1000 * batch, 1000 * batch + batch))
        prompt = timed_ms(backend, [StepInput(i, list(range(1, 17))) for i in ids])
        steps = [timed_ms(backend, [StepInput(i, [5]) for i in ids]) for _ in range(3)]
        print(f"| {batch} | {prompt:.1f} | " + " | ".join(f"{s:.1f}" for s in steps) + " |", flush=True)
        for i in ids:
            backend.release(i)


if __name__ == "__main__":
    main()
