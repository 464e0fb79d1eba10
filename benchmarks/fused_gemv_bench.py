"""The one-row kernel as the fused Llama layer calls it (lmql_hf.cuda.one_row_layers), on the Llama 1.2B
shapes (or Qwen3-0.6B's, with its 151,936 x 1,024 tied head), over block configurations: RMSNorm
inside q/k/v and gate/up (SwiGLU), the residual inside o_proj and down_proj. Prints µs per
product and the weight-read bandwidth, the default configuration first, then the fastest.
Needs a CUDA GPU.

    python benchmarks/fused_gemv_bench.py [--model qwen3-0.6b]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemv_bench import graph_time_us  # noqa: E402

from lmql_hf.kernels.gemv_kernel import RowNorm, block_sizes, row_times_weights  # noqa: E402

WHOLE_ROW = [(n, 2048, w) for n, w in itertools.product((1, 2, 4), (2, 4, 8))]
# name: (weight rows, K, activation, norm fused, residual added, configurations)
SHAPES = {
    "qkv + RMSNorm": (3072, 2048, None, True, False, WHOLE_ROW),
    "gate_up + RMSNorm + SwiGLU": (16384, 2048, "silu_mul", True, False, WHOLE_ROW),
    "o_proj + residual": (2048, 2048, None, False, True,
                          list(itertools.product((1, 2, 4), (1024, 2048), (4, 8)))),
    "down + residual": (2048, 8192, None, False, True,
                        list(itertools.product((1, 2), (2048, 4096), (4, 8, 16)))),
}

NARROW_ROW = [(n, 1024, w) for n, w in itertools.product((1, 2, 4, 8), (1, 2, 4))]
QWEN3_SHAPES = {
    "qkv + RMSNorm": (4096, 1024, None, True, False, NARROW_ROW),
    "gate_up + RMSNorm + SwiGLU": (6144, 1024, "silu_mul", True, False, NARROW_ROW),
    "o_proj + residual": (1024, 2048, None, False, True,
                          list(itertools.product((1, 2, 4), (1024, 2048), (2, 4, 8)))),
    "down + residual": (1024, 3072, None, False, True,
                        list(itertools.product((1, 2, 4), (1024, 2048, 4096), (2, 4, 8)))),
    "tied head": (151936, 1024, None, False, False, NARROW_ROW),
}
SHAPES_OF = {"llama-1b": SHAPES, "qwen3-0.6b": QWEN3_SHAPES}


def bench(rows: int, k: int, act: str | None, norm_on: bool, residual_on: bool,
          configs: list[tuple[int, int, int]]) -> list[tuple[str, float, float]]:
    dtype, size = torch.bfloat16, rows * k * 2
    n = rows // 2 if act == "silu_mul" else rows
    copies = max(4, -(-300_000_000 // size))
    weights = [torch.randn(rows, k, device="cuda", dtype=dtype) / k ** 0.5 for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    norm = RowNorm("rms", torch.rand(k, device="cuda", dtype=dtype), None, 1e-5) if norm_on else None
    residual = torch.randn(1, n, device="cuda", dtype=dtype) if residual_on else None
    results = []
    for config in [block_sizes(n, k, norm_on), *configs]:
        def products(c: tuple[int, int, int] = config) -> None:
            for w in weights:
                row_times_weights(x, w, None, act, c, norm=norm, residual=residual)

        us = graph_time_us(products) / copies
        results.append((f"triton {config}", us, size / us / 1e3))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(SHAPES_OF), default="llama-1b")
    model = parser.parse_args().model
    print(f"{torch.cuda.get_device_name()}, {model}\n| shape | variant | µs | GB/s |\n|---|---|---|---|")
    for name, shape in SHAPES_OF[model].items():
        results = bench(*shape)
        for label, us, gbs in [results[0], *sorted(results[1:], key=lambda r: r[1])[:4]]:
            print(f"| {name} | {label} | {us:.2f} | {gbs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
