"""Where a decode step's time goes, on the GPU: forward alone, forward + sampling, the whole
engine (no sockets), for several batch sizes. Uses the gpt2-medium-shaped model of gpu_bench.

    python benchmarks/step_profile.py [--batches 1,8,64] [--steps 100]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import MODEL_DIR, build_model  # noqa: E402

from lmql_core.backend import StepInput  # noqa: E402
from lmql_core.engine.engine import Engine  # noqa: E402
from lmql_core.engine.sampling import sample_batch  # noqa: E402  (launch + collect)
from lmql_core.engine.sequence import SamplingParams, Sequence  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402


def timed(fn, steps: int) -> float:  # noqa: ANN001
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * 1000


def profile_backend(backend: HFBackend, batch: int, steps: int) -> dict[str, float]:
    ids = list(range(10_000 * batch, 10_000 * batch + batch))
    backend.forward([StepInput(i, [1, 2, 3, 4, 5, 6, 7, 8]) for i in ids])
    params = [SamplingParams(max_tokens=1000, top_logprobs=1) for _ in ids]

    def forward() -> None:
        backend.forward([StepInput(i, [5]) for i in ids])

    def forward_and_sample() -> None:
        out = backend.forward([StepInput(i, [5]) for i in ids])
        sample_batch(backend.ops, out.last_logits, params, 0)

    result = {"forward_ms": timed(forward, steps), "forward+sample_ms": timed(forward_and_sample, steps)}
    for i in ids:
        backend.release(i)
    return result


def profile_engine(engine: Engine, batch: int, new_tokens: int) -> float:
    done = threading.Semaphore(0)

    def sink(events: list) -> None:  # noqa: ANN001
        for e in events:
            if e.finish_reason is not None:
                done.release()

    seqs = [Sequence(i, [1, 2, 3, 4] * 4, SamplingParams(max_tokens=new_tokens, top_logprobs=1), sink)
            for i in range(batch)]
    started = time.perf_counter()
    for seq in seqs:
        engine.submit(seq)
    for _ in seqs:
        done.acquire()
    return batch * new_tokens / (time.perf_counter() - started)


class ProfiledEngine(Engine):
    """The engine with cProfile running in its own thread."""

    def _run(self) -> None:
        import cProfile

        self.profiler = cProfile.Profile()
        self.profiler.enable()
        try:
            super()._run()
        finally:
            self.profiler.disable()


def profile_host(backend: HFBackend, batch: int) -> None:
    import pstats

    engine = ProfiledEngine(backend)
    profile_engine(engine, batch, 8)
    tok_s = profile_engine(engine, batch, 128)
    engine.stop()
    print(f"batch {batch}: {tok_s:.0f} tok/s under the profiler")
    pstats.Stats(engine.profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cprofile", type=int, metavar="BATCH",
                        help="only print where the engine thread's host time goes at this batch size")
    args = parser.parse_args()
    build_model()
    backend = HFBackend(str(MODEL_DIR), cuda=True, dtype="float16")
    if args.cprofile:
        profile_host(backend, args.cprofile)
        return
    engine = Engine(backend)
    print("| batch | forward ms | forward+sample ms | engine tok/s (no sockets) |")
    print("|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        times = profile_backend(backend, batch, args.steps)
        profile_engine(engine, batch, 8)  # warm-up
        tok_s = profile_engine(engine, batch, 128)
        print(f"| {batch} | {times['forward_ms']:.2f} | {times['forward+sample_ms']:.2f} | {tok_s:.0f} |",
              flush=True)
    engine.stop()


if __name__ == "__main__":
    main()
