"""Issue 9: one model spread over every visible GPU (run on a machine with at least two).

    python scripts/multi_gpu_check.py

Builds a Llama-shaped model from its config with random weights (no downloads), serves it with
`lmql serve-model DIR --cuda` under a per-GPU memory budget that forces it across both GPUs,
prints which layers sit on which GPU (MODEL_INFO), generates over LMTP and compares the greedy
tokens with a single-GPU run (`CUDA_VISIBLE_DEVICES=1`, which must put everything on one GPU).
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


def build_model() -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(MODEL_DIR)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def serve(env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lmql_core", "serve-model", MODEL_DIR, "--cuda", "--dtype",
                             "bfloat16", "--port", str(port), *extra], env={**os.environ, **env})
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

    from lmql_core.lmtp.loop import run_sync

    return llm.model_info_sync()["model_info"], [run_sync(tokens(p)) for p in PROMPTS]


def main() -> None:
    count = torch.cuda.device_count()
    print(f"GPUs visible: {count}")
    size = build_model()
    budget = f"{int(size * 0.6 / 2**20)}MiB"  # each GPU may hold 60% of the weights: both are needed
    results = {}
    for name, env, extra in [("spread", {}, ["--max_memory", json.dumps({"0": budget, "1": budget})]),
                             ("one GPU", {"CUDA_VISIBLE_DEVICES": "1"}, [])]:
        proc, port = serve(env, *extra)
        try:
            info, tokens = greedy(port)
        finally:
            proc.terminate()
            proc.wait()
        results[name] = tokens
        placement: dict[str, list[str]] = {}
        for module, device in info["layers"].items():
            placement.setdefault(device, []).append(module)
        print(f"{name}: devices={info['devices']} placement={ {d: len(m) for d, m in placement.items()} }")
        print(f"   first modules per device: { {d: m[:3] for d, m in placement.items()} }")
    same = results["spread"] == results["one GPU"]
    print(f"greedy tokens equal between the spread and the single-GPU run: {same}")
    sys.exit(0 if same and count >= 2 else 1)


if __name__ == "__main__":
    main()
