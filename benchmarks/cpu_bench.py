"""CPU benchmark: our server against LMQL 0.7.3's on the same models and workloads.

    python benchmarks/cpu_bench.py [--lmql-python /path/to/lmql073-venv/bin/python]

Models: the bundled lmql-tiny and a 4-layer GPT-2 built here with random weights. Workloads:
1, 8 and 32 concurrent streams (32 prompt tokens, 64 new tokens) and 32 streams arriving 20 ms
apart. Without --lmql-python only our server runs. Prints one table (markdown).
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
from processes import free_port, start_server  # noqa: E402

GPT2_DIR = Path(tempfile.gettempdir()) / "lmql-bench-gpt2-4layer"
WORKLOADS = [(1, 0.0), (8, 0.0), (32, 0.0), (32, 20.0)]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def build_gpt2() -> Path:
    if not (GPT2_DIR / "config.json").exists():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4)).save_pretrained(GPT2_DIR)
    return GPT2_DIR


def servers(model: str, lmql_python: str | None) -> list[tuple[str, list[str]]]:
    ours = [sys.executable, "-m", "lmql_core", "serve-model", model]
    found = [("lmql-core", ours)]
    if lmql_python:  # LMQL 0.7.3 preloads the model in the background: its first request waits
        script = str(Path(lmql_python).parent / "lmql")  # that environment's `lmql` command
        found.append(("lmql 0.7.3", [script, "serve-model", model, "--static"]))
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
        for name, command in servers(model, args.lmql_python):
            port = free_port()
            proc = start_server([*command, "--port", str(port)], port, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=OFFLINE)
            try:
                for streams, stagger in WORKLOADS:
                    result = lmtp_load.main(["--endpoint", f"127.0.0.1:{port}", "--model", model, "--json",
                                             "--streams", str(streams), "--prompt-len", "32", "--new-tokens",
                                             str(args.new_tokens), "--stagger-ms", str(stagger), *shape])
                    rows.append({"server": name, "model": Path(model).name, **result})
            finally:
                proc.terminate()
                proc.wait()
    print("| server | model | streams | stagger ms | tok/s | TTFT median ms | TTFT p90 ms | ITL median ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['model']} | {r['streams']} | {r['stagger_ms']} | {r['tok_per_s']} | "
              f"{r['ttft_median_ms']} | {r['ttft_p90_ms']} | {r['itl_median_ms']} |")


if __name__ == "__main__":
    main()
