"""A decode step on the CPU, in-process: ``HFBackend.forward`` of one token per stream, timed with
the lean step (``lean_decode``, its output head in the forms the warm-up chose) and without it.

    python benchmarks/cpu_step_bench.py [--model gpt2-4layer|qwen3-4layer|lmql-tiny|PATH] [--rows 1,8,32]

The 4-layer models are built here with random weights (the GPT-2 is cpu_bench.py's). Each point
is the best of 3 rounds of 20 steps, streams at 32 tokens of context. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_bench import build_gpt2  # noqa: E402

QWEN3_DIR = Path(tempfile.gettempdir()) / "lmql-bench-qwen3-4layer"


def build_qwen3() -> Path:
    if not (QWEN3_DIR / "config.json").exists():
        import torch
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(0)
        config = Qwen3Config(vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                             max_position_embeddings=2048)
        Qwen3ForCausalLM(config).save_pretrained(QWEN3_DIR)
    return QWEN3_DIR


def model_path(name: str) -> str:
    if name == "gpt2-4layer":
        return str(build_gpt2())
    if name == "qwen3-4layer":
        return str(build_qwen3())
    if name == "lmql-tiny":
        from lmql_hf.bundled import bundled_path

        return str(bundled_path("lmql-tiny"))
    return name


def step_ms(backend: object, rows: int) -> float:
    from lmql_core.backend import StepInput

    ids = list(range(1000, 1000 + rows))
    backend.forward([StepInput(i, [5] * 31) for i in ids])  # type: ignore[attr-defined]

    def step() -> None:
        backend.forward([StepInput(i, [7]) for i in ids])  # type: ignore[attr-defined]

    for _ in range(5):
        step()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(20):
            step()
        best = min(best, (time.perf_counter() - began) / 20)
    backend.release_all(ids)  # type: ignore[attr-defined]
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-4layer")
    parser.add_argument("--rows", default="1,8,32", help="streams per step, comma-separated")
    args = parser.parse_args()
    from lmql_hf.backend import HFBackend

    path, rows = model_path(args.model), [int(r) for r in args.rows.split(",")]
    print("| model | lean_decode | " + " | ".join(f"{r} rows ms" for r in rows) + " | head forms |")
    print("|" + "---|" * (len(rows) + 3))
    for lean in (False, True):
        backend = HFBackend(path, lean_decode=lean)
        times = [f"{step_ms(backend, r):.2f}" for r in rows]
        forms = backend.lean.head.forms if backend.lean is not None else ""
        print(f"| {args.model} | {lean} | " + " | ".join(times) + f" | {forms} |")


if __name__ == "__main__":
    main()
