"""Host cost of a small packed prompt pass, on the CPU: the aten operations one pass dispatches
(per layer) and its wall time, on narrow models of gpt2-medium's and Llama's depth whose compute
is negligible, so what is measured is the host's work per launch (what bounds such a pass on a
GPU: benchmarks/RESULTS.md, issue 19's staggered TTFT).

    python benchmarks/packed_host_cost.py [--tokens 16] [--prompts 1] [--repeats 50] [--fuse]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from lmql_core.base.backend import StepInput
from lmql_hf.backend import HFBackend

LAYERS = 24
CONFIGS = {
    "gpt2 (24 layers, narrow)": GPT2Config(n_layer=LAYERS, n_embd=64, n_head=4, vocab_size=1000),
    "llama (24 layers, narrow, GQA)": LlamaConfig(num_hidden_layers=LAYERS, hidden_size=64,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  intermediate_size=128, vocab_size=1000),
}


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def one_pass(backend: HFBackend, ids: list[int], tokens: int) -> None:
    backend.forward([StepInput(i, [(i * 7 + j) % 1000 for j in range(tokens)]) for i in ids])
    backend.release_all(ids)


def measure(name: str, config: Any, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        backend = HFBackend(folder, max_seq_len=256, cpu_threads=1, reuse_prefixes=False,
                            fuse_kernels=args.fuse)
    ids = iter(range(1, 10**9))
    one_pass(backend, [next(ids) for _ in range(args.prompts)], args.tokens)  # warm
    counter = CountOps()
    with counter:
        one_pass(backend, [next(ids) for _ in range(args.prompts)], args.tokens)
    began = time.perf_counter()
    for _ in range(args.repeats):
        one_pass(backend, [next(ids) for _ in range(args.prompts)], args.tokens)
    ms = 1000 * (time.perf_counter() - began) / args.repeats
    total = sum(counter.ops.values())
    print(f"{name}: {total} aten ops per pass ({total / LAYERS:.1f} per layer), {ms:.2f} ms per pass")
    print("   most frequent:", ", ".join(f"{op} {n}" for op, n in counter.ops.most_common(12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--fuse", action="store_true", help="swap in the fused modules, as on CUDA")
    args = parser.parse_args()
    for name, config in CONFIGS.items():
        measure(name, config, args)


if __name__ == "__main__":
    main()
