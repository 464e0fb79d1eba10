"""One-row matrix products on the GPU: cuBLAS against lmql_hf's Triton kernel, on the
gpt2-medium layer shapes (or the Llama 1.2B ones). Each product runs over enough distinct weight
copies that the L2 cache does not help, captured in a CUDA graph; prints µs per product and
the weight-read bandwidth.

    python benchmarks/gemv_bench.py [--sweep] [--shapes llama]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.nn import functional

from lmql_hf.kernels.gemv_kernel import block_sizes, row_times_weights

SHAPES = {"qkv": (3072, 1024, None), "attn_proj": (1024, 1024, None), "fc+gelu": (4096, 1024, "gelu_tanh"),
          "mlp_proj": (1024, 4096, None), "lm_head": (50257, 1024, None)}
# bench_models' llama-1b: q/k/v as one product, gate and up as one (both rows read: 2 x 8192)
LLAMA_SHAPES = {"llama qkv": (3072, 2048, None), "llama o_proj": (2048, 2048, None),
                "llama gate_up": (16384, 2048, None), "llama down": (2048, 8192, None),
                "llama lm_head": (128256, 2048, None)}
SWEEP = list(itertools.product((1, 2, 4), (1024, 2048), (2, 4, 8)))


def graph_time_us(fn, repeats: int = 20) -> float:  # noqa: ANN001
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = graph_time_us(lambda: b.copy_(a))
    return 2 * a.numel() / us / 1e3


def cublas(x: torch.Tensor, w_kn: torch.Tensor, bias: torch.Tensor, act: str | None) -> torch.Tensor:
    y = torch.addmm(bias, x, w_kn)
    return functional.gelu(y, approximate="tanh") if act else y


def check(n: int, k: int, act: str | None, config: tuple[int, int, int] | None) -> float:
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=torch.float16)
    ref = functional.linear(x.double(), w.double(), b.double())
    ref = functional.gelu(ref, approximate="tanh") if act else ref
    out = row_times_weights(x, w, b, act, config)
    return float((out.double() - ref).norm() / ref.norm())


def bench_shape(n: int, k: int, act: str | None, sweep: bool) -> list[tuple[str, float, float]]:
    size = n * k * 2
    copies = max(4, -(-300_000_000 // size))
    weights_nk = [torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5 for _ in range(copies)]
    weights_kn = [w.t().contiguous() for w in weights_nk]
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    results = []

    def timed(label: str, fn) -> None:  # noqa: ANN001
        us = graph_time_us(lambda: [fn(i) for i in range(copies)]) / copies
        results.append((label, us, size / us / 1e3))

    timed("cublas [K,N]", lambda i: cublas(x, weights_kn[i], bias, act))
    timed("cublas [N,K]", lambda i: cublas(x, weights_nk[i].t(), bias, act))
    configs = [block_sizes(n, k)]
    if sweep:
        configs += SWEEP
    for config in configs:
        if config[1] > k or config[0] * config[1] > 32768:
            continue
        error = check(n, k, act, config)
        assert error < 2e-3, (n, k, config, error)
        timed(f"triton {config}", lambda i, c=config: row_times_weights(x, weights_nk[i], bias, act, c))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="also time other block configurations")
    parser.add_argument("--shapes", choices=["gpt2", "llama"], default="gpt2")
    args = parser.parse_args()
    shapes = LLAMA_SHAPES if args.shapes == "llama" else SHAPES
    print(f"{torch.cuda.get_device_name()}: device copy {copy_bandwidth():.0f} GB/s")
    print("| shape | variant | µs | GB/s |\n|---|---|---|---|")
    for name, (n, k, act) in shapes.items():
        results = bench_shape(n, k, act, args.sweep)
        best = sorted(results[3:], key=lambda r: r[1])[:3]
        for label, us, gbs in [*results[:3], *best]:
            print(f"| {name} | {label} | {us:.2f} | {gbs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
