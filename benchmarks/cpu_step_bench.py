"""A decode step on the CPU, in-process: ``HFBackend.forward`` of one token per stream, timed
without the lean step, with it (``lean_decode``, its output head in the forms the warm-up chose),
and with its linear layers packed for oneDNN where they time faster (``packed_linears``).

    python benchmarks/cpu_step_bench.py [--model gpt2-4layer|qwen3-4layer|qwen3-wide-4layer|
        qwen3-0.6b-4layer|lmql-tiny|PATH] [--rows 1,8,32]

The 4-layer models are built here with random weights (the GPT-2 is cpu_bench.py's; the Qwen3s
are 256 and 1,024 wide with an untied 32,000-token head, and Qwen3-0.6B's shape with its tied
151,936-token head). Each point
is the best of 3 rounds of 20 steps, streams at 32 tokens of context. Prints one markdown table.
``--clock cpu`` times the process's CPU time (``time.process_time``) instead of the wall clock:
on a machine shared with other work, what the step itself costs. ``--prompt N`` adds a column:
a prompt pass of N new tokens continuing a cached prefix of 30 (as LMQL's growing prompts run),
a fresh prefix each time (best of 3 rounds of 10).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_bench import build_gpt2  # noqa: E402

# name -> width, vocabulary, head tied to the embeddings (Qwen3-0.6B: 1,024, 151,936, tied)
QWEN3_SHAPES = {"qwen3-4layer": (256, 32000, False), "qwen3-wide-4layer": (1024, 32000, False),
                "qwen3-0.6b-4layer": (1024, 151936, True)}


def build_qwen3(name: str) -> Path:
    """4 layers, head dimension 64, of the shape QWEN3_SHAPES names."""
    folder = Path(tempfile.gettempdir()) / f"lmql-bench-{name}"
    if not (folder / "config.json").exists():
        import torch
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(0)
        width, vocabulary, tied = QWEN3_SHAPES[name]
        config = Qwen3Config(vocab_size=vocabulary, hidden_size=width, intermediate_size=3 * width,
                             num_hidden_layers=4, num_attention_heads=width // 64,
                             num_key_value_heads=width // 128, head_dim=64, max_position_embeddings=2048,
                             tie_word_embeddings=tied)
        Qwen3ForCausalLM(config).save_pretrained(folder)
    return folder


def model_path(name: str) -> str:
    if name == "gpt2-4layer":
        return str(build_gpt2())
    if name in QWEN3_SHAPES:
        return str(build_qwen3(name))
    if name == "lmql-tiny":
        from lmql_hf.bundled import bundled_path

        return str(bundled_path("lmql-tiny"))
    return name


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def step_ms(backend: object, rows: int, clock: Callable[[], float]) -> float:
    from lmql_core.base.backend import StepInput

    ids = list(range(1000, 1000 + rows))
    backend.forward([StepInput(i, [5] * 31) for i in ids])  # type: ignore[attr-defined]

    def step() -> None:
        backend.forward([StepInput(i, [7]) for i in ids])  # type: ignore[attr-defined]

    for _ in range(5):
        step()
    best = float("inf")
    for _ in range(3):
        began = clock()
        for _ in range(20):
            step()
        best = min(best, (clock() - began) / 20)
    backend.release_all(ids)  # type: ignore[attr-defined]
    return best * 1000


def prompt_ms(backend: object, new_tokens: int, clock: Callable[[], float]) -> float:
    """A prompt pass of ``new_tokens`` after a cached prefix of 30 tokens (a fresh one each time)."""
    from lmql_core.base.backend import StepInput

    forward, release = backend.forward, backend.release  # type: ignore[attr-defined]
    seq_id = itertools.count(5000)
    fresh = itertools.count(100)
    best = float("inf")
    for round_ in range(4):  # the first untimed
        spent = 0.0
        for _ in range(10):
            prefix = [next(fresh) % 1000 + 3] + [5] * 29
            first, second = next(seq_id), next(seq_id)
            forward([StepInput(first, prefix)])
            release(first)
            began = clock()
            forward([StepInput(second, prefix + [7] * new_tokens)])
            spent += clock() - began
            release(second)
        if round_:
            best = min(best, spent / 10)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-4layer")
    parser.add_argument("--rows", default="1,8,32", help="streams per step, comma-separated")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--prompt", type=int, default=0, help="also a prompt pass of this many new tokens")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    from lmql_hf.backend import HFBackend

    path, rows = model_path(args.model), [int(r) for r in args.rows.split(",")]
    times = " | ".join(f"{r} rows ms" for r in rows) + (f" | prompt +{args.prompt} ms" if args.prompt else "")
    print(f"{args.clock} clock\n")
    print(f"| model | lean_decode | packed_linears | {times} | head forms | packed layers |")
    print("|" + "---|" * (len(rows) + 5 + bool(args.prompt)))
    for lean, packed in ((False, False), (True, False), (True, "auto")):
        backend = HFBackend(path, lean_decode=lean, packed_linears=packed)
        times = " | ".join(f"{step_ms(backend, r, clock):.2f}" for r in rows)
        if args.prompt:
            times += f" | {prompt_ms(backend, args.prompt, clock):.2f}"
        forms = backend.lean.head.forms if backend.lean is not None else ""
        chosen = ", ".join(sorted(backend.lean.packed_roles)) if backend.lean is not None else ""
        print(f"| {args.model} | {lean} | {packed} | {times} | {forms} | {chosen} |")


if __name__ == "__main__":
    main()
