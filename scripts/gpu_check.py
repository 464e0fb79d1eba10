"""Checks on a real CUDA GPU (run outside CI; results go to benchmarks/RESULTS.md):

1. the bundled lmql-tiny with --cuda in float32, float16 and bfloat16: greedy output equal to
   the CPU's, and MODEL_INFO reporting the device and dtype;
2. the CUDA-graph decode path and the fused modules equal to the plain eager path (gpt2-shaped
   model, random weights), for five streams and for one (the one-row kernel's case), with buckets
   replaying their batch's cover (``--capture_all False``), all before Ready, and all while idle;
3. the slot-cache attention kernels and the prompt graphs (``--slot_attention``) against SDPA and
   eager prompt passes, with the fused modules against without: GPT-2 and a Llama shape with
   grouped-query attention, a Qwen3 shape (per-head norms of q and k, heads wider than
   hidden / heads, a tied head), long prompts whose packed passes hold thousands of tokens (beyond
   gpt2's 1,024-position context), one stream and twelve, and SCORE log-probs; the same with one
   decode graph per batch for every length (``--any_length_graphs``);
4. the decode-attention kernel in float32, float16 and bfloat16 (which Triton's interpreter
   multiplies wrongly, so the CPU tests leave it out) against SDPA: 256 rows of mixed lengths
   whose keys past each row's length are NaN, given keys up to a bucket and up to the context
   (also split evenly, as ``--any_length_graphs`` runs it).
5. a greedy step's choice in one kernel (``kernels/best_kernel``, which the engine's greedy steps
   use on CUDA) against torch's log_softmax and max (``best_of_check.py``).

    python scripts/gpu_check.py
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

import lmql
from lmql_hf.bundled import bundled_path

PROMPTS = ["Once upon a time", "The cat sat on the", "A wise man once said", "Q: Why?\nA:"]


# bans a hundred tokens and favours one: the bias rows are built on the device (one per stream)
BIAS = {**{str(t): -100 for t in range(50, 150)}, "200": 3.0}


def greedy(llm: Any, n: int = 32, **options: Any) -> list[str]:
    return [llm.generate_sync(p, max_tokens=n, **options) for p in PROMPTS]


def check_bundled() -> bool:
    if bundled_path("lmql-tiny") is None:
        print("lmql-tiny is not bundled: skipped")
        return True
    cpu = greedy(lmql.model("local:lmql-tiny"))
    cpu_biased = greedy(lmql.model("local:lmql-tiny"), logit_bias=BIAS)
    ok = cpu_biased != cpu
    for dtype in ("float32", "float16", "bfloat16"):
        llm = lmql.model("local:lmql-tiny", cuda=True, dtype=dtype)
        info = llm.model_info_sync()["model_info"]
        out = greedy(llm)
        same = sum(a == b for a, b in zip(out, cpu, strict=True))
        print(f"lmql-tiny cuda {dtype}: devices={info['devices']} dtype={info['dtype']} "
              f"graphs={info['kv_cache']['cuda_graphs']} greedy equal to CPU: {same}/{len(cpu)}")
        for a, b in zip(out, cpu, strict=True):
            if a != b:
                print(f"   cpu : {b!r}\n   cuda: {a!r}")
        ok &= info["devices"] == ["cuda:0"] and info["dtype"] == dtype
        ok &= dtype != "float32" or same == len(cpu)  # (half precisions may differ by rounding)
        biased = greedy(llm, logit_bias=BIAS)
        same = sum(a == b for a, b in zip(biased, cpu_biased, strict=True))
        print(f"lmql-tiny cuda {dtype} with a logit bias: greedy equal to CPU: {same}/{len(cpu)}")
        ok &= dtype != "float32" or same == len(cpu)
    return ok


def check_graphs() -> bool:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = "/tmp/lmql-check-gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=4, n_head=4, vocab_size=1000)).save_pretrained(path)
    variants = [{"cuda_graphs": False, "fuse_kernels": False}, {"cuda_graphs": False, "fuse_kernels": True},
                {"cuda_graphs": True, "fuse_kernels": True, "capture_all": False},
                {"cuda_graphs": True, "fuse_kernels": True, "capture_all": True}]
    ok = True
    for streams in (5, 1):  # one stream: the linear layers run the one-row Triton kernel
        results = [greedy_steps(path, options, streams) for options in variants]
        results.append(greedy_steps(path, variants[2], streams, idle_captures=True))
        same = all(r == results[0] for r in results)
        print(f"{streams} stream(s): eager decode = eager with fused modules = CUDA graph decode (buckets "
              f"replaying their batch's cover; all captured before Ready; all while idle): {same}")
        ok &= same
    return ok


def check_slot_attention() -> bool:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    llama, qwen3 = "/tmp/lmql-check-llama-gqa", "/tmp/lmql-check-qwen3"
    LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=2, vocab_size=1000,
                                 max_position_embeddings=2048)).save_pretrained(llama)
    model = Qwen3ForCausalLM(Qwen3Config(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                                         vocab_size=1000, max_position_embeddings=2048,
                                         tie_word_embeddings=True))
    with torch.no_grad():  # norm weights off one: q_norm's and k_norm's differ
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(qwen3)
    plain = {"slot_attention": False, "fuse_kernels": False}
    kernels = {"slot_attention": True, "fuse_kernels": True}
    variants = {"slot kernels + prompt graphs + fused modules": kernels,
                "the same, every graph captured before Ready": {**kernels, "capture_all": True},
                "the same with one decode graph for every length": {**kernels, "any_length_graphs": True}}
    ok = True
    for name, path in (("gpt2", "/tmp/lmql-check-gpt2"), ("llama-gqa", llama), ("qwen3", qwen3)):
        expected = {}
        for streams in (12, 1):
            expected[streams] = greedy_steps(path, plain, streams, 150)
            for label, options in variants.items():
                same = expected[streams] == greedy_steps(path, options, streams, 150)
                print(f"{name}, {streams} stream(s) with prompts of 150-{150 + 30 * streams} tokens: "
                      f"{label} = SDPA + eager passes: {same}")
                ok &= same
        same = expected[12] == greedy_steps(path, kernels, 12, 150, idle_captures=True)
        print(f"{name}, 12 streams, every graph captured while idle first (the prompt pass's too): {same}")
        ok &= same
        gap = (score_rows(path, plain) - score_rows(path, kernels)).abs().max().item()
        print(f"{name}, SCORE of 8 x 600 tokens through one packed pass: largest logit gap {gap:.2e}")
        ok &= gap < 1e-3
    return ok


def check_decode_kernel() -> bool:
    from torch.nn import functional

    from lmql_hf.kernels.slot_attention import decode_attention

    ok = True
    rows, context = 256, 2048
    lengths = torch.randint(1, context + 1, (rows,), generator=torch.Generator().manual_seed(2))
    lengths[:3] = torch.tensor([1, 1024, context])  # one position; a bucket's edge; the context's
    seen = (torch.arange(context)[None, :] < lengths[:, None]).cuda()
    for heads, kv_heads, dim in ((16, 16, 64), (16, 8, 128), (32, 8, 64)):  # GPT-2, Qwen3, Llama
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            q = torch.randn(rows, heads, 1, dim, device="cuda", dtype=dtype)
            cache = torch.randn(2, rows, kv_heads, context, dim, device="cuda", dtype=dtype)
            want = functional.scaled_dot_product_attention(
                q.float(), *(c.float() for c in cache), attn_mask=seen[:, None, None, :],
                enable_gqa=True).transpose(1, 2)
            cache.masked_fill_(~seen[None, :, None, :, None], float("nan"))  # never to be read
            worst = 0.0
            # a bucket (its rows only), the whole context, and that in even splits (--any_length_graphs)
            for given, even in ((1024, False), (context, False), (context, True)):
                fits = lengths <= given
                out = decode_attention(q[fits], cache[0, fits, :, :given], cache[1, fits, :, :given],
                                       (lengths[fits] - 1).cuda(), even=even)
                worst = max(worst, (out.float() - want[fits]).abs().max().item())
            good = worst < {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
            print(f"decode kernel, {rows} rows of 1-{context} positions, heads {heads}/{kv_heads} x {dim}, "
                  f"{dtype}: largest gap to SDPA {worst:.1e}: {'ok' if good else 'MISMATCH'}")
            ok &= good
    return ok


def score_rows(path: str, options: dict[str, bool]) -> torch.Tensor:
    from lmql_core.base.backend import StepInput
    from lmql_hf.backend import HFBackend

    backend = HFBackend(path, cuda=True, dtype="float32", **options)
    assert (backend.prompts is not None) == options["slot_attention"]
    rng = torch.Generator().manual_seed(1)
    rows = [StepInput(i, torch.randint(0, 1000, (600,), generator=rng).tolist(), all_logits=True,
                      logits_from=500) for i in range(1, 9)]
    out = backend.forward(rows)
    return torch.cat([out.all_logits[r.seq_id].float() for r in rows])


def greedy_steps(path: str, options: dict[str, bool], streams: int, shortest: int = 5,
                 idle_captures: bool = False) -> dict[int, list[int]]:
    """With ``idle_captures``, the backend's idle work (every graph not captured before Ready)
    is done first, as an idle engine does it."""
    from lmql_core.base.backend import StepInput
    from lmql_hf.backend import HFBackend

    backend = HFBackend(path, cuda=True, dtype="float32", **options)
    while idle_captures and (pause := backend.idle()) is not None:
        time.sleep(pause)
    rng = torch.Generator().manual_seed(0)
    step = 3 if shortest < 100 else 30
    prompts = {i: torch.randint(0, 1000, (shortest + step * i,), generator=rng).tolist()
               for i in range(1, streams + 1)}
    out = backend.forward([StepInput(i, p) for i, p in prompts.items()])
    tokens = {i: [int(out.last_logits[k].argmax())] for k, i in enumerate(prompts)}
    for _ in range(40):
        out = backend.forward([StepInput(i, t[-1:]) for i, t in tokens.items()])
        for k, i in enumerate(tokens):
            tokens[i].append(int(out.last_logits[k].argmax()))
        if len(tokens[1]) == 20 and 3 in tokens:
            backend.release(3)  # a stream leaves mid-way: slots are compacted
            tokens.pop(3)
    return tokens


if __name__ == "__main__":
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    from best_of_check import check as check_best_of  # (beside this script)

    ok = check_graphs() & check_slot_attention() & check_decode_kernel() & check_bundled() & check_best_of()
    print("ALL OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)
