"""The HF backend's own options (taken by the backend, not passed to ``from_pretrained``).

Kept free of torch, so that ``lmql serve-model --help`` can list them without loading it.
"""

from __future__ import annotations

from typing import Any

# name: (default, one line of help); plugins/hf/README.md explains each at length
OPTIONS: dict[str, tuple[Any, str]] = {
    "max_batch": (64, "most streams decoded together (more wait in the queue)"),
    "max_seq_len": (2048, "longest prompt + generation per stream (capped by the model)"),
    "prefill_tokens": (8192, "most prompt tokens in one packed pass (a longer step runs in parts)"),
    "warm_up": (None, "run a made-up workload before Ready: no request loads kernels (default: with CUDA)"),
    "cuda_graphs": (True, "replay decode steps from CUDA graphs (single GPU)"),
    "reuse_prefixes": (True, "reuse finished streams' KV caches for prompts extending them"),
    "cache_memory_fraction": (0.5, "share of free GPU memory given to the KV cache"),
    "cpu_cache_bytes": (4 << 30, "KV cache budget on the CPU, in bytes"),
    "cpu_threads": (None, "the host's matrix threads (default: cores - 1 on CPU, 1 on GPUs)"),
    "chain_steps": (None, "queue decode steps from tokens still on the GPU (default: with graphs)"),
    "fuse_kernels": (None, "swap modules for fused kernels (default: on with CUDA)"),
    "compile": (False, "True or a torch.compile mode: compile the decode forward"),
    "progress": (False, "show transformers' progress bars while loading"),
}
ENGINE_OPTIONS = {name: default for name, (default, _) in OPTIONS.items()}


def option_help() -> dict[str, str]:
    """What ``register_backends`` announces: each option with its help and default."""
    return {name: text if default is None else f"{text} [default: {default}]"
            for name, (default, text) in OPTIONS.items()}
