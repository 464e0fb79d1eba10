"""Where prefill time goes on the GPU, in-process (no sockets): packed prompt passes, decode
steps, mixed steps, SCORE passes, and the engine on 64 long prompts and 64 SCORE requests
(first time and again, fresh prompts).

    python benchmarks/hf_prefill_profile.py [--only gpt2,qwen3] [--kernels] [--host] [--no-engine]
        [--option slot_attention=False]

Uses the models of benchmarks/hf_prefill_bench.py (built from their configs, random weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_prefill_bench import GPT2_DIR, QWEN3_DIR, build_gpt2, build_qwen3  # noqa: E402

from lmql_core.base.backend import StepInput  # noqa: E402
from lmql_core.engine.engine import Engine  # noqa: E402
from lmql_core.engine.sequence import Kind, SamplingParams, Sequence  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402

_ids = iter(range(10**6, 10**9))  # clear of the engine's own sequence ids


def fresh(count: int, length: int, vocab: int) -> list[list[int]]:
    return torch.randint(3, vocab, (count, length)).tolist()


def timed_ms(fn, repeats: int = 5) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


def prompts_pass(backend: HFBackend, count: int, length: int) -> None:
    seq_ids = [next(_ids) for _ in range(count)]
    backend.forward([StepInput(i, p) for i, p in zip(seq_ids, fresh(count, length, backend.vocab_size),
                                                     strict=True)])
    backend.release_all(seq_ids)


def step_times(backend: HFBackend) -> None:
    for count, length in [(4, 512), (1, backend.max_context // 2), (16, 128), (8, 256)]:
        ms = timed_ms(lambda: prompts_pass(backend, count, length))  # noqa: B023 (called at once)
        print(f"  {count} x {length} new prompt tokens: {ms:.2f} ms")
    running = [next(_ids) for _ in range(60)]
    prompts = fresh(60, 600, backend.vocab_size)
    backend.forward([StepInput(i, p) for i, p in zip(running, prompts, strict=True)])
    decode = [StepInput(i, [5]) for i in running]
    print(f"  60 decode rows at ~600 positions: {timed_ms(lambda: backend.forward(decode)):.2f} ms")

    def mixed() -> None:
        seq_ids = [next(_ids) for _ in range(4)]
        news = [StepInput(i, p) for i, p in zip(seq_ids, fresh(4, 512, backend.vocab_size), strict=True)]
        backend.forward(decode + news)
        backend.release_all(seq_ids)

    print(f"  60 decode rows + 4 x 512 new prompt tokens: {timed_ms(mixed):.2f} ms")
    backend.release_all(running)
    print(f"  SCORE pass, 30 x (256 + 16): {timed_ms(lambda: score_pass(backend, 30)):.2f} ms")


def score_pass(backend: HFBackend, count: int, prompt: int = 256, scored: int = 16) -> None:
    """A step of SCORE requests as the engine feeds them: whole, logits from the prompt's last."""
    seq_ids = [next(_ids) for _ in range(count)]
    rows = fresh(count, prompt + scored, backend.vocab_size)
    out = backend.forward([StepInput(i, r, all_logits=True, logits_from=prompt - 1)
                           for i, r in zip(seq_ids, rows, strict=True)])
    out.all_logits[seq_ids[-1]].float().log_softmax(-1)
    backend.release_all(seq_ids)


def kernels(backend: HFBackend) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name, work in (("4 x 512 prompts", lambda: prompts_pass(backend, 4, 512)),
                       ("SCORE 30 x (256 + 16)", lambda: score_pass(backend, 30))):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            work()
            torch.cuda.synchronize()
        print(f"  kernels of one pass, {name}:")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))


def host_profile(backend: HFBackend) -> None:
    """Python's own time in the host work of SCORE passes and of 16 x 128-token prompt passes
    (the GPU's kernels: --kernels)."""
    import cProfile
    import pstats

    for name, work in (("SCORE 30 x (256 + 16)", lambda: score_pass(backend, 30)),
                       ("16 x 128 prompts", lambda: prompts_pass(backend, 16, 128))):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5):
            work()
        torch.cuda.synchronize()
        profiler.disable()
        print(f"  host profile of 5 passes, {name}:")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(28)


def engine_run(engine: Engine, count: int, length: int, new_tokens: int, vocab: int,
               stagger_ms: float = 0.0) -> str:
    arrivals: dict[int, list[float]] = {}
    done = threading.Semaphore(0)

    def sink(events: list) -> None:  # noqa: ANN001
        now = time.perf_counter()
        for e in events:
            arrivals.setdefault(e.stream_id, []).append(now)
            if e.finish_reason is not None or e.error:
                done.release()

    params = SamplingParams(max_tokens=new_tokens, top_logprobs=1, logit_bias={0: -100.0})
    seqs = [Sequence(next(_ids), p, params, sink) for p in fresh(count, length, vocab)]
    began = time.perf_counter()
    sent = {}
    for seq in seqs:
        sent[seq.stream_id] = time.perf_counter()
        engine.submit(seq)
        time.sleep(stagger_ms / 1000)
    for _ in seqs:
        done.acquire()
    seconds = time.perf_counter() - began
    ttft = statistics.median(arrivals[s.stream_id][0] - sent[s.stream_id] for s in seqs) * 1000
    gaps = sorted(b - a for s in seqs for a, b in zip(arrivals[s.stream_id], arrivals[s.stream_id][1:],
                                                      strict=False))
    p99 = gaps[int(0.99 * (len(gaps) - 1))] * 1000 if gaps else 0.0
    return f"{count * new_tokens / seconds:.0f} tok/s, TTFT median {ttft:.1f} ms, ITL p99 {p99:.1f} ms"


def engine_scores(engine: Engine, count: int, vocab: int) -> str:
    """``count`` SCORE requests of 256 prompt + 16 scored tokens submitted at once: requests/s."""
    done = threading.Semaphore(0)

    def sink(events: list) -> None:  # noqa: ANN001
        for e in events:
            if e.finish_reason is not None or e.error:
                done.release()

    rows = fresh(count, 272, vocab)
    seqs = [Sequence(next(_ids), r[:256], SamplingParams(max_tokens=0), sink, kind=Kind.SCORE, scored=r[256:])
            for r in rows]
    began = time.perf_counter()
    for seq in seqs:
        engine.submit(seq)
    for _ in seqs:
        done.acquire()
    return f"{count / (time.perf_counter() - began):.0f} requests/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="gpt2,qwen3")
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--host", action="store_true", help="cProfile of the passes' host work")
    parser.add_argument("--no-engine", action="store_true", help="passes only, not the engine runs")
    parser.add_argument("--token-budgets", default="2048,8192", help="the engine's, one run each")
    parser.add_argument("--option", action="append", default=[], help="backend option NAME=VALUE")
    args = parser.parse_args()
    models = {"gpt2": (build_gpt2, GPT2_DIR, "float16", 512),
              "qwen3": (build_qwen3, QWEN3_DIR, "bfloat16", 1024)}
    options = {k: int(v) if v.isdigit() else {"True": True, "False": False}.get(v, v)
               for k, v in (o.split("=", 1) for o in args.option)}
    for name in args.only.split(","):
        build, path, dtype, length = models[name]
        build()
        began = time.perf_counter()
        backend = HFBackend(str(path), cuda=True, dtype=dtype, **options)
        print(f"{name}: loaded and warmed in {time.perf_counter() - began:.1f} s, options {options}")
        for budget in [] if args.no_engine else args.token_budgets.split(","):
            engine = Engine(backend, token_budget=int(budget))
            print(f"  token budget {budget}:")
            for run in ("first", "again"):
                one = engine_run(engine, 1, 16, 32, backend.vocab_size)
                print(f"    1 x 16 prompt, 32 new, {run}: {one}")
            for run in ("first", "again"):
                print(f"    64 x {length} prompts, 128 new, {run}: "
                      f"{engine_run(engine, 64, length, 128, backend.vocab_size)}")
            print(f"    32 x {length} prompts 5 ms apart, 128 new: "
                  f"{engine_run(engine, 32, length, 128, backend.vocab_size, stagger_ms=5)}")
            for run in ("first", "again"):
                print(f"    SCORE 64 x (256 + 16), {run}: {engine_scores(engine, 64, backend.vocab_size)}")
            engine.stop()
        step_times(backend)
        if args.kernels:
            kernels(backend)
        if args.host:
            host_profile(backend)
        del backend
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
