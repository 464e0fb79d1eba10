"""GPU benchmark: a gpt2-medium-shaped model (random weights, built from its config, fp16),
served by lmql-core over LMTP and in-process, beside plain HF ``generate``.

    python benchmarks/gpu_bench.py [--streams 1,8,32,64] [--new-tokens 128] [--out DIR] [SERVER ARG ...]

SERVER ARGs go to our server (engine options such as ``--chain_steps False``). Prompts are fresh
in every run; the server's first run has no warm-up (its "first after Ready" row), the others
a warm-up of their own prompts. benchmarks/workloads.py has issue 19's wider set of workloads.

Prints one table; with --out writes results.json there. Needs a CUDA GPU; downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmtp_load  # noqa: E402
from bench_models import FOLDERS, bench_model  # noqa: E402
from processes import free_port, start_server  # noqa: E402

MODEL_DIR = FOLDERS["gpt2-medium"]


def build_model() -> None:
    bench_model("gpt2-medium")


def start_ours(port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    return start_server([sys.executable, "-m", "lmql_core", "serve-model", str(MODEL_DIR), "--cuda",
                         "--dtype", "float16", "--port", str(port), *extra], port)


def hf_generate(batch: int, prompt_len: int, new_tokens: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float16).cuda().eval()
    ids = torch.randint(0, 50000, (batch, prompt_len), device="cuda")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(ids, **dict(kwargs, max_new_tokens=4, min_new_tokens=4))
    torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    del model
    torch.cuda.empty_cache()
    return {"streams": batch, "transport": "hf-generate", "tok_per_s": round(batch * new_tokens / seconds, 1),
            "seconds": round(seconds, 3)}


def engine_counters(endpoint: str) -> dict[str, float]:
    """The server's step counters, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = ("lmql_engine_steps_total", "lmql_engine_busy_seconds_total",
             "lmql_engine_device_wait_seconds_total", "lmql_gc_pause_seconds_total")
    counters: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(names):  # summed over labels (the collector's generations)
            name = line.split("{")[0]
            counters[name] = counters.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return counters


def per_step(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Host time of the engine thread per step: working, and blocked on the GPU; the server's
    time in the garbage collector."""
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    steps = max(delta.get("lmql_engine_steps_total", 0.0), 1.0)
    busy = delta.get("lmql_engine_busy_seconds_total", 0.0)
    wait = delta.get("lmql_engine_device_wait_seconds_total", 0.0)
    gc_pause = delta.get("lmql_gc_pause_seconds_total", 0.0)
    return {"steps": int(steps), "gc_pause_ms": round(1000 * gc_pause, 1),
            "host_ms_per_step": round(1000 * (busy - wait) / steps, 3),
            "wait_ms_per_step": round(1000 * wait / steps, 3)}


def workloads(streams: list[int], new_tokens: int) -> list[list[str]]:
    runs = [["--streams", str(n), "--new-tokens", str(new_tokens)] for n in streams]
    runs.append(["--streams", str(max(streams)), "--new-tokens", str(new_tokens), "--stagger-ms", "20"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,8,32,64")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    args, server_args = parser.parse_known_args()
    streams = [int(n) for n in args.streams.split(",")]
    build_model()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    results = []
    port = free_port()
    server = start_ours(port, server_args)
    try:
        for i, run in enumerate(workloads(streams, args.new_tokens)):
            endpoint = f"127.0.0.1:{port}"
            before = engine_counters(endpoint)
            first = ["--no-warmup"] if i == 0 else []  # the server's first requests, as they come
            results.append(lmtp_load.main(["--endpoint", endpoint, "--model", str(MODEL_DIR), *run, *first]))
            results[-1].update(per_step(before, engine_counters(endpoint)),
                               phase="first after Ready" if first else "warm")
    finally:
        server.terminate()
        server.wait()
    if not args.skip_local:
        for run in workloads(streams, args.new_tokens):
            results.append(lmtp_load.main(["--local", "--cuda", "--dtype", "float16", "--model",
                                           str(MODEL_DIR), *run]))
    if not args.skip_hf:
        for batch in (1, max(streams)):
            results.append(hf_generate(batch, 16, args.new_tokens))
            print(results[-1], flush=True)
    print_table(results)
    if args.out:
        Path(args.out, "results.json").write_text(json.dumps(results, indent=1))


def print_table(results: list[dict]) -> None:
    columns = ["transport", "phase", "streams", "stagger_ms", "tok_per_s", "ttft_median_ms", "ttft_p90_ms",
               "itl_median_ms", "itl_max_ms", "seconds", "steps", "host_ms_per_step", "wait_ms_per_step",
               "gc_pause_ms"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")


if __name__ == "__main__":
    main()
