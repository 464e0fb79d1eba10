"""Issue 9: one model spread over every visible GPU (run on a machine with at least two).

    python scripts/multi_gpu_check.py

Builds a Llama-shaped model from its config with random weights (no downloads), serves it with
`lmql serve-model DIR --cuda` under a per-GPU memory budget that forces it across both GPUs,
prints which layers sit on which GPU (MODEL_INFO), generates over LMTP and compares the greedy
tokens with a single-GPU run (`CUDA_VISIBLE_DEVICES=1`, which must put everything on one GPU).

The comparison runs in float32: the single-GPU run replays CUDA graphs of fused kernels while the
spread run goes eagerly, and in bfloat16 their rounding differs enough to flip an argmax of this
random model. A bfloat16 spread run is served and generated too, for placement and shape only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import torch

import lmql

MODEL_DIR = "/tmp/lmql-multi-gpu-llama"
PROMPTS = [[1, 306, 4658, 278], [1, 450, 4996, 338, 263], [1, 13, 13, 3492]]


def build_model(dtype: torch.dtype) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(MODEL_DIR)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def serve(env: dict[str, str], dtype: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lmql_core", "serve-model", MODEL_DIR, "--cuda", "--dtype",
                             dtype, "--port", str(port), *extra], env={**os.environ, **env})
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc, port
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("server did not start")


def greedy(port: int) -> tuple[dict, list[list[int]]]:
    llm = lmql.model(MODEL_DIR, endpoint=f"127.0.0.1:{port}", tokenizer=None)

    async def tokens(prompt: list[int]) -> list[int]:
        request = {"model": MODEL_DIR, "prompt": prompt, "max_tokens": 24, "temperature": 0}
        return [e["token"] async for e in llm.client.request("GENERATE", request)]

    from lmql_core.lmtp.client.loop import run_sync

    return llm.model_info_sync()["model_info"], [run_sync(tokens(p)) for p in PROMPTS]


def run(name: str, env: dict[str, str], dtype: str, extra: list[str]) -> list[list[int]]:
    proc, port = serve(env, dtype, *extra)
    try:
        info, tokens = greedy(port)
    finally:
        proc.terminate()
        proc.wait()
    placement: dict[str, list[str]] = {}
    for module, device in info["layers"].items():
        placement.setdefault(device, []).append(module)
    print(f"{name}: devices={info['devices']} placement={ {d: len(m) for d, m in placement.items()} }")
    print(f"   first modules per device: { {d: m[:3] for d, m in placement.items()} }")
    return tokens


def main() -> None:
    count = torch.cuda.device_count()
    print(f"GPUs visible: {count}")
    results, spread_ok = {}, True
    for dtype, torch_dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        size = build_model(torch_dtype)
        budget = f"{int(size * 0.6 / 2**20)}MiB"  # each GPU may hold 60% of the weights: both are needed
        spread = run(f"spread {dtype}", {}, dtype, ["--max_memory", json.dumps({"0": budget, "1": budget})])
        spread_ok = spread_ok and all(len(t) == 24 for t in spread)
        if dtype == "float32":
            single = run(f"one GPU {dtype}", {"CUDA_VISIBLE_DEVICES": "1"}, dtype, [])
            results = {"spread": spread, "one GPU": single}
    same = results["spread"] == results["one GPU"]
    print(f"bfloat16 spread run generated 24 tokens per prompt: {spread_ok}")
    print(f"float32 greedy tokens equal between the spread and the single-GPU run: {same}")
    sys.exit(0 if same and spread_ok and count >= 2 else 1)


if __name__ == "__main__":
    main()
