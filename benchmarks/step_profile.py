"""Where a decode step's time goes, on the GPU: forward alone, forward + sampling, the whole
engine (no sockets), for several batch sizes, on one of bench_models' models (gpt2-medium by default).

    python benchmarks/step_profile.py [--model llama-1b] [--batches 1,8,64] [--steps 100] [--kernels]
        [--option fuse_kernels=False] [--option chain_steps=False]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402

from lmql_core.base.backend import StepInput  # noqa: E402
from lmql_core.base.options import parse_loader_args  # noqa: E402
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


def replay_ms(backend: HFBackend, batch: int, steps: int) -> float:
    """GPU time of one decode step alone: the captured graph replayed back to back."""
    assert backend.graphs is not None
    graph = backend.graphs.graphs[(next(b for b in backend.graphs.batches if b >= batch), backend.lengths[0])]
    graph.inputs[2].fill_(backend.table.scratch)  # writes only to the scratch slot
    return timed(graph.graph.replay, steps)


def print_kernels(backend: HFBackend, batch: int) -> None:
    """Which kernels one eager decode step launches, and what each kind costs on the GPU."""
    from torch.profiler import ProfilerActivity, profile

    device = backend.device
    ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
    positions = torch.full((batch, 1), 8, dtype=torch.long, device=device)
    slots = torch.full((batch, 1), backend.table.scratch, dtype=torch.long, device=device)

    forward = backend.graphs.forward if backend.graphs else backend.decode_forward  # compiled if asked
    params = [SamplingParams(max_tokens=1000, top_logprobs=1) for _ in range(batch)]

    def step() -> None:
        with torch.inference_mode():
            logits = forward(ids, positions, slots, backend.lengths[0])[:, -1]
            sample_batch(backend.ops, logits, params, 0)

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    launched = sum(e.count for e in kernels)
    busy = sum(e.self_device_time_total for e in kernels) / 1000
    print(f"batch {batch}: {launched} kernels, {busy:.2f} ms of GPU time in one step and its sampling "
          "(not replayed from a graph)")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:30]:
        print(f"  {e.count:4d} x {e.self_device_time_total / e.count:7.1f} us  {e.key[:90]}")


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
    parser.add_argument("--model", default="gpt2-medium", choices=["gpt2-medium", "llama-1b", "qwen3-0.6b"])
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine option of the HF backend, e.g. fuse_kernels=False")
    parser.add_argument("--kernels", action="store_true", help="also list one eager step's kernels")
    parser.add_argument("--cprofile", type=int, metavar="BATCH",
                        help="only print where the engine thread's host time goes at this batch size")
    args = parser.parse_args()
    model = bench_model(args.model)
    started = time.perf_counter()
    # every graph before the engine exists: its idle captures would race this thread's direct steps
    options = {"capture_all": True, **parse_loader_args([f"--{option}" for option in args.option])}
    backend = HFBackend(str(model.folder), cuda=True, dtype=model.dtype, **options)
    print(f"options {args.option or 'default'}: {backend.info()['kv_cache']}, "
          f"ready in {time.perf_counter() - started:.1f} s", flush=True)
    if args.cprofile:
        profile_host(backend, args.cprofile)
        return
    batches = [int(b) for b in args.batches.split(",")]
    if args.kernels:
        for batch in batches:
            print_kernels(backend, batch)
    engine = Engine(backend)
    print("| batch | graph replay ms | forward ms | forward+sample ms | engine tok/s (no sockets) "
          "| host ms/step | wait ms/step |")
    print("|---|---|---|---|---|---|---|")
    for batch in batches:
        replay = replay_ms(backend, batch, args.steps) if backend.graphs else float("nan")
        times = profile_backend(backend, batch, args.steps)
        profile_engine(engine, batch, 8)  # warm-up
        before = dataclasses.replace(engine.stats)
        tok_s = profile_engine(engine, batch, 128)
        steps = engine.stats.steps - before.steps
        wait = (engine.stats.device_wait_seconds - before.device_wait_seconds) / steps * 1000
        host = (engine.stats.busy_seconds - before.busy_seconds) / steps * 1000 - wait
        print(f"| {batch} | {replay:.3f} | {times['forward_ms']:.2f} | {times['forward+sample_ms']:.2f} "
              f"| {tok_s:.0f} | {host:.3f} | {wait:.3f} |", flush=True)
    engine.stop()


if __name__ == "__main__":
    main()
