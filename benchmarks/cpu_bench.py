"""CPU benchmark: our server against LMQL 0.7.3's on the same models and workloads.

    python benchmarks/cpu_bench.py [--lmql-python /path/to/lmql073-venv/bin/python]

Models: the bundled lmql-tiny and a 4-layer GPT-2 built here with random weights. Workloads:
1, 8 and 32 concurrent streams (32 prompt tokens, 64 new tokens) and 32 streams arriving 20 ms
apart, prompts drawn fresh for every run. Each server's first run comes straight after it is
ready (no warm-up: the "first after Ready" row); the others after a warm-up of their own prompts.
Without --lmql-python only our server runs. Prints one table (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmtp_load  # noqa: E402
from processes import OFFLINE_ENV, free_port, lmql_073_env, start_server  # noqa: E402

GPT2_DIR = Path(tempfile.gettempdir()) / "lmql-bench-gpt2-4layer"
WORKLOADS = [(1, 0.0), (8, 0.0), (32, 0.0), (32, 20.0)]
OURS = "lmql-core"
TARGET_RATIO = 1.5  # issue #19: at least 1.5x LMQL 0.7.3's tok/s at every point


def build_gpt2() -> Path:
    if not (GPT2_DIR / "config.json").exists():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4)).save_pretrained(GPT2_DIR)
    return GPT2_DIR


def servers(model: str, lmql_python: str | None) -> list[tuple[str, list[str], dict[str, str]]]:
    """Name, command and environment of each server (LMQL's without our PYTHONPATH)."""
    ours = [sys.executable, "-m", "lmql_core", "serve-model", model]
    found = [(OURS, ours, {**os.environ, **OFFLINE_ENV})]
    if lmql_python:  # LMQL 0.7.3 preloads the model in the background: its first request waits
        script = str(Path(lmql_python).parent / "lmql")  # that environment's `lmql` command
        found.append(("lmql 0.7.3", [script, "serve-model", model, "--static"], lmql_073_env(None, None)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmql-python", help="python of an environment with lmql==0.7.3")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    from lmql_hf.bundled import bundled_path

    rows = []
    for model in (str(bundled_path("lmql-tiny")), str(build_gpt2())):
        config = json.loads((Path(model) / "config.json").read_text())
        shape = ["--vocab-size", str(config["vocab_size"]), "--eos-token-id", str(config["eos_token_id"])]
        for name, command, env in servers(model, args.lmql_python):
            port = free_port()
            proc = start_server([*command, "--port", str(port)], port, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
            try:
                if name != OURS:  # it listens before its model has loaded: wait for one token
                    lmtp_load.main(["--endpoint", f"127.0.0.1:{port}", "--model", model, "--json",
                                    "--no-warmup", "--streams", "1", "--new-tokens", "1", *shape])
                for run, (streams, stagger) in enumerate(WORKLOADS):
                    first = ["--no-warmup"] if run == 0 else []
                    result = lmtp_load.main(["--endpoint", f"127.0.0.1:{port}", "--model", model, "--json",
                                             "--streams", str(streams), "--prompt-len", "32", "--new-tokens",
                                             str(args.new_tokens), "--stagger-ms", str(stagger), *shape,
                                             *first])
                    phase = "first after Ready" if first else "warm"
                    rows.append({"server": name, "model": Path(model).name, "phase": phase, **result})
            finally:
                proc.terminate()
                proc.wait()
    print(table(rows))


def table(rows: list[dict]) -> str:
    """One markdown row per run; ours with its ratio to LMQL 0.7.3's run of the same point (the
    target: TARGET_RATIO at every point)."""
    columns = ("server", "model", "phase", "streams", "stagger_ms", "tok_per_s", "ttft_median_ms",
               "ttft_p90_ms", "itl_median_ms")
    point = ("model", "streams", "stagger_ms")
    theirs = {tuple(r[c] for c in point): r["tok_per_s"] for r in rows if r["server"] != OURS}
    lines = ["| server | model | phase | streams | stagger ms | tok/s | TTFT median ms | TTFT p90 ms | "
             f"ITL median ms | x LMQL 0.7.3 (target {TARGET_RATIO}x) |", "|" + "---|" * (len(columns) + 1)]
    for r in rows:
        base = theirs.get(tuple(r[c] for c in point)) if r["server"] == OURS else None
        ratio = f"{r['tok_per_s'] / base:.2f}x" if base else ""
        lines.append("| " + " | ".join([*(str(r[c]) for c in columns), ratio]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
