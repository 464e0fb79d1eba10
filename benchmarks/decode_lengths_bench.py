"""Decode steps of many streams of mixed lengths, by how attention reads their keys (issue 32), on
one GPU:

- ``sdpa``: ``--slot_attention False``: SDPA with a mask, every row read up to the step's length
  bucket (the longest row's, rounded up to a power of two);
- ``kernel``: the slot-attention kernel (the default): each row read up to its own length, one
  decode graph per (batch, length bucket);
- ``any-length``: the same kernel with ``--any_length_graphs True``: one decode graph per batch,
  every step given the whole context (the kernel still reads each row up to its own length).

For each, in a process of its own (a backend plans GPU memory from what is free): the time to a
backend with every graph captured, and how many decode graphs; then for each batch, streams whose
lengths are uniform in [--shortest, --longest] (the offline workload's mix, 100-1024 in and out):
one decode step as its graph replayed alone (GPU time) and as ``backend.forward`` (host and GPU).
Last, the attention alone on one layer's cache, the kernel against SDPA with a mask, also as GB/s
of the keys and values the rows need (what a step must read at least).

    python3 benchmarks/decode_lengths_bench.py [--model qwen3-0.6b] [--batches 64,256] [--steps 50]
        [--variants sdpa,kernel,any-length]

A smoke run of the code on the CPU (Triton's interpreter; no graphs, so no replay figures):
``TRITON_INTERPRET=1 python3 benchmarks/decode_lengths_bench.py --model lmql-tiny --batches 2,3
--steps 2 --shortest 10 --longest 70``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402

VARIANTS: dict[str, dict[str, bool]] = {
    "sdpa": {"slot_attention": False},
    "kernel": {"slot_attention": True},
    "any-length": {"slot_attention": True, "any_length_graphs": True},
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RESULT = "RESULT "  # a variant's process prints its figures on a line starting so


def stream_lengths(batch: int, shortest: int, longest: int) -> list[int]:
    """The same lengths for every variant (a fixed seed per batch)."""
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(shortest, longest + 1, (batch,), generator=generator).tolist()


def gpu_ms(run: Any, steps: int) -> float:
    run()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize()
    return (time.perf_counter() - started) / steps * 1000


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def measure_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from lmql_core.base.backend import StepInput
    from lmql_hf.backend import HFBackend

    model = bench_model(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()
    backend = HFBackend(str(model.folder), cuda=DEVICE == "cuda", dtype=model.dtype, capture_all=True,
                        max_batch=max(batches), **VARIANTS[name])
    result: dict[str, Any] = {"variant": name, "ready_s": time.perf_counter() - started,
                              "decode_graphs": len(backend.graphs.plan.captured) if backend.graphs else 0,
                              "max_batch": backend.max_batch, "steps": {}}
    vocab = backend.vocab_size
    for batch in (b for b in batches if b <= backend.max_batch):
        lengths = stream_lengths(batch, args.shortest, args.longest)
        ids = list(range(1, batch + 1))
        prompts = [torch.randint(1, vocab, (n,)).tolist() for n in lengths]
        backend.forward([StepInput(i, p) for i, p in zip(ids, prompts, strict=True)])  # packed parts

        def step(ids: list[int] = ids) -> None:
            backend.forward([StepInput(i, [5]) for i in ids])

        forward_ms = gpu_ms(step, args.steps)
        replay = float("nan")
        if backend.graphs is not None:  # the graph the steps ran, replayed with the last step's inputs
            graphs = backend.graphs
            rows = next(b for b in graphs.batches if b >= batch)
            length = next(n for n in graphs.lengths if n > max(lengths) + args.steps)
            replay = gpu_ms(graphs.graphs[(rows, length)].graph.replay, args.steps)
        result["steps"][batch] = {"replay_ms": replay, "forward_ms": forward_ms,
                                  "mean_length": sum(lengths) / batch}
        backend.release_all(ids)
    return result


def attention_alone(lengths: list[int], heads: int, kv_heads: int, dim: int, context: int,
                    dtype: torch.dtype, steps: int) -> tuple[int, dict[str, float]]:
    """One layer's decode attention of rows of ``lengths``: ms of SDPA with a mask and of the kernel
    over the longest row's bucket, and of the kernel over the whole context in even splits (as
    ``--any_length_graphs`` runs it); and the bucket."""
    from lmql_hf.cache import packed
    from lmql_hf.kernels.slot_attention import decode_attention

    bucket = min(1 << max(lengths).bit_length(), context)
    q = torch.randn(len(lengths), heads, 1, dim, device=DEVICE, dtype=dtype)
    k, v = (torch.randn(len(lengths), kv_heads, context, dim, device=DEVICE, dtype=dtype) for _ in range(2))
    positions = torch.tensor(lengths, device=DEVICE) - 1
    seen = torch.arange(bucket, device=DEVICE)[None, :] <= positions[:, None]
    mask = torch.zeros(seen.shape, dtype=dtype, device=DEVICE).masked_fill(~seen, torch.finfo(dtype).min)
    mask = mask[:, None, None, :]  # (rows, 1, 1, keys), as the decode step's SDPA takes it
    k_bucket, v_bucket = k[:, :, :bucket], v[:, :, :bucket]
    return bucket, {
        "SDPA, bucket": gpu_ms(lambda: packed._one_query_grouped(q, k_bucket, v_bucket, mask, None), steps),
        "kernel, bucket": gpu_ms(lambda: decode_attention(q, k_bucket, v_bucket, positions), steps),
        "kernel, context, even": gpu_ms(lambda: decode_attention(q, k, v, positions, even=True), steps),
    }


def print_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.model}, streams of {args.shortest}-{args.longest} positions\n")
    print("| variant | ready s | decode graphs | batch | mean length | graph replay ms | forward ms "
          "| tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for batch, s in r["steps"].items():
            print(f"| {r['variant']} | {r['ready_s']:.1f} | {r['decode_graphs']} | {batch} | "
                  f"{s['mean_length']:.0f} | {s['replay_ms']:.3f} | {s['forward_ms']:.3f} | "
                  f"{int(batch) / s['forward_ms'] * 1000:.0f} |")


def print_attention(args: argparse.Namespace) -> None:
    from transformers import AutoConfig

    model = bench_model(args.model)
    config = AutoConfig.from_pretrained(model.folder)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads  # GPT-2: one per query head
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    context = min(args.context, config.max_position_embeddings)
    dtype = getattr(torch, model.dtype)
    print(f"\nOne layer's decode attention ({heads}/{kv_heads} heads x {dim}, {model.dtype}, context "
          f"{context}): ms, and GB/s of the keys and values the rows need (each read once)\n")
    print("| batch | bucket | way | ms | GB/s needed |")
    print("|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        lengths = stream_lengths(batch, args.shortest, args.longest)
        needed = sum(lengths) * kv_heads * dim * 2 * dtype.itemsize
        bucket, times = attention_alone(lengths, heads, kv_heads, dim, context, dtype, args.steps)
        for way, ms in times.items():
            print(f"| {batch} | {bucket} | {way} | {ms:.3f} | {needed / ms / 1e6:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen3-0.6b",
                        choices=["gpt2-medium", "llama-1b", "qwen3-0.6b", "lmql-tiny"])
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--shortest", type=int, default=100)
    parser.add_argument("--longest", type=int, default=1900, help="below the context less 2 x --steps")
    parser.add_argument("--context", type=int, default=2048, help="--max_seq_len (the default's)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one, in this process
    args = parser.parse_args()
    if args.variant:
        with torch.inference_mode():
            print(RESULT + json.dumps(measure_variant(args.variant, args)), flush=True)
        return
    results = []
    for name in filter(None, args.variants.split(",")):  # none: the attention alone
        command = [sys.executable, __file__, "--variant", name, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
        if done.returncode or not lines:
            print(f"{name}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][len(RESULT):]))
        print_tables(results[-1:], args)
    print_tables(results, args)
    print_attention(args)


if __name__ == "__main__":
    main()
