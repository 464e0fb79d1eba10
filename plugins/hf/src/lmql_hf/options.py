"""The HF backend's own options (taken by the backend, not passed to ``from_pretrained``).

Kept free of torch, so that ``lmql serve-model --help`` can list them without loading it.
"""

from __future__ import annotations

from lmql_core.plugin import Option

# plugins/hf/README.md explains each at length
OPTIONS: dict[str, Option] = {
    "max_batch": Option(int, None,
                        "most streams decoded together, more wait (default: on a GPU as many as memory "
                        "holds, up to 256; 64 elsewhere)"),
    "max_seq_len": Option(int, 2048, "longest prompt + generation per stream (capped by the model)"),
    "prefill_tokens": Option(int, 8192,
                             "most prompt tokens in one packed pass (a longer step runs in parts)"),
    "warm_up": Option(bool, True,
                      "run a made-up workload before Ready: no request loads kernels (a smaller one on CPU)"),
    "cuda_graphs": Option(bool, True, "replay decode steps from CUDA graphs (single GPU)"),
    "capture_all": Option(bool, False,
                          "capture every CUDA graph before Ready (seconds longer start-up, no capture "
                          "later); default: the prompt passes' graphs, one stream's up to 256 positions "
                          "and each batch size's at the longest length (which serves every shorter length "
                          "at about the same cost), the rest while the server idles"),
    "capture_at_use": Option(int, 2,
                             "a graph whose capture ran out of memory is tried again at this use of "
                             "its shape (a capture stalls every stream 20-75 ms), the uses before it "
                             "run eagerly"),
    "reuse_prefixes": Option(bool, True, "reuse finished streams' KV caches for prompts extending them"),
    "cache_memory_fraction": Option(float, None,
                                    "share of free GPU memory for the KV cache and the passes' work "
                                    "(default: 0.95; with layers spread over GPUs, 0.5 for the cache)"),
    "cpu_cache_bytes": Option(int, 4 << 30, "KV cache budget on the CPU, in bytes"),
    "cpu_threads": Option(int | None, None,
                          "the host's matrix threads (default: cores - 1 on CPU, every core for a "
                          "model of 4M+ weights in steps of 8+ tokens; 1 on GPUs)"),
    "chain_steps": Option(bool | None, None,
                          "queue decode steps from tokens still on the GPU (default: with graphs)"),
    "fuse_kernels": Option(bool | None, None, "swap modules for fused kernels (default: on with CUDA)"),
    "slot_attention": Option(bool, True,
                             "attend through our Triton kernels over the KV cache: decode steps read each "
                             "stream only up to its length, prompt passes replay from CUDA graphs (CUDA; "
                             "False: SDPA)"),
    "any_length_graphs": Option(bool, False,
                                "with --slot_attention: one decode graph per batch size serves every length "
                                "(the kernel reads each stream only up to its own length), not one per "
                                "length bucket: a sixth of the decode graphs to capture and of their logits' "
                                "memory (off until measured on a GPU)"),
    "lean_decode": Option(bool, True,
                          "on the CPU, run Llama's, Qwen2's, Qwen3's and GPT-2's decode steps as direct "
                          "torch operations rather than through transformers' modules (same results up to "
                          "rounding)"),
    "packed_linears": Option(bool | str, "auto",
                             "on the CPU, the lean decode step's linear layers through oneDNN with their "
                             "weights packed for it, also in prompt passes (True, False, or auto: each "
                             "kind of layer whose first layer times faster so at load)"),
    "compile": Option(bool | str, False, "True or a torch.compile mode: compile the decode forward"),
    "progress": Option(bool, False, "show transformers' progress bars while loading"),
}
ENGINE_OPTIONS = {name: option.default for name, option in OPTIONS.items()}
# every other loader option goes on to transformers, as the design asks
EXTRA_OPTIONS = "AutoModelForCausalLM.from_pretrained"
