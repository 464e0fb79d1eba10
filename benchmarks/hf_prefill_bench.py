"""Long prompts, cold servers and mixed arrivals on the HF backend (issue #19's workloads).

    python benchmarks/hf_prefill_bench.py [--label new] [--code DIR] [--only gpt2,qwen3]

Serves a gpt2-medium-shaped model (fp16) and a Qwen3-0.6B-shaped one (bf16, 151,936-token
vocabulary), both built from their configs with random weights, and drives each over LMTP with
benchmarks/lmtp_load.py: fresh prompts for every run (a new --seed each, no warm-up requests),
the first request after "Ready" measured on its own. ``--code DIR`` serves another checkout's
sources (DIR/src and DIR/plugins/hf/src first on PYTHONPATH), e.g. the code before a change.
Prints one JSON line per run and a table. Needs a CUDA GPU; downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import FOLDERS, bench_model  # noqa: E402
from gpu_bench import MODEL_DIR as GPT2_DIR  # noqa: E402
from gpu_bench import build_model as build_gpt2  # noqa: E402
from processes import free_port, start_server  # noqa: E402

QWEN3_DIR = FOLDERS["qwen3-0.6b"]
LOAD = str(Path(__file__).resolve().parent / "lmtp_load.py")
# (name, lmtp_load arguments): run in this order on one server; seeds differ, so prompts are fresh
WORKLOADS = {
    "gpt2": [("first request after Ready", ["--streams", "1", "--prompt-len", "16"]),
             ("1 stream", ["--streams", "1", "--prompt-len", "16"]),
             ("64 x 512-token prompts, first", ["--streams", "64", "--prompt-len", "512"]),
             ("64 x 512-token prompts, again", ["--streams", "64", "--prompt-len", "512"]),
             ("16 streams 20 ms apart", ["--streams", "16", "--prompt-len", "16", "--stagger-ms", "20"])],
    "qwen3": [("first request after Ready", ["--streams", "1", "--prompt-len", "16"]),
              ("64 x 1024-token prompts", ["--streams", "64", "--prompt-len", "1024"]),
              ("128 x 512-token prompts 10 ms apart, 256 new",
               ["--streams", "128", "--prompt-len", "512", "--new-tokens", "256", "--stagger-ms", "10"])],
}


def build_qwen3() -> None:
    """The shared Qwen3-0.6B-shaped model (benchmarks/bench_models.py), so both scripts read one
    folder with one configuration (EOS id included)."""
    bench_model("qwen3-0.6b")


def serve(model: str, dtype: str, code: str | None) -> tuple[subprocess.Popen[bytes], int, float]:
    env = dict(os.environ)
    if code:
        paths = [f"{code}/src", f"{code}/plugins/hf/src", env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    port = free_port()
    began = time.perf_counter()
    command = [sys.executable, "-m", "lmql_core", "serve-model", model, "--cuda", "--dtype", dtype,
               "--port", str(port)]
    server = start_server(command, port, env=env)
    return server, port, time.perf_counter() - began


def drive(port: int, model: str, arguments: list[str], seed: int) -> dict[str, object]:
    command = [sys.executable, LOAD, "--endpoint", f"127.0.0.1:{port}", "--model", model, "--no-warmup",
               "--json", "--seed", str(seed), *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        return {"error": "over 150 s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": (done.stderr or done.stdout)[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--code", help="serve the sources of this checkout instead")
    parser.add_argument("--only", default="gpt2,qwen3")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    args = parser.parse_args()
    models = {"gpt2": (build_gpt2, str(GPT2_DIR), "float16"),
              "qwen3": (build_qwen3, str(QWEN3_DIR), "bfloat16")}
    rows = []
    seed = args.seed
    for name in args.only.split(","):
        build, path, dtype = models[name]
        build()
        server, port, startup = serve(path, dtype, args.code)
        print(json.dumps({"label": args.label, "model": name, "startup_s": round(startup, 1)}), flush=True)
        try:
            for workload, arguments in WORKLOADS[name]:
                seed += 1
                result = drive(port, path, arguments, seed)
                result.update(label=args.label, model=name, workload=workload)
                print(json.dumps(result), flush=True)
                rows.append(result)
        finally:
            server.terminate()
            server.wait()
    print("| code | model | workload | tok/s | TTFT median ms | TTFT p90 ms | ITL median ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['model']} | {r['workload']} | {r.get('tok_per_s', r.get('error'))} | "
              f"{r.get('ttft_median_ms')} | {r.get('ttft_p90_ms')} | {r.get('itl_median_ms')} |")


if __name__ == "__main__":
    main()
