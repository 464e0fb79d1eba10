"""Which passes of the HF backend replay from CUDA graphs, and their capture before "Ready".

Decode steps (graphs.py) replay on one GPU unless ``--cuda_graphs False``; packed prompt passes
(prompt_graphs.py) where decode steps do and the slot-cache attention kernels run, for models
whose logits are the output head applied to the last hidden states.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

import torch
from rich.console import Console

from lmql_hf.cuda.graphs import DecodeGraphs
from lmql_hf.cuda.prompt_graphs import PromptGraphs
from lmql_hf.kernels.tiles import tokens_per_tile

console = Console(stderr=True)


def decode_graphs(backend: Any) -> DecodeGraphs | None:
    """Decode steps of one GPU's model replay from graphs, each bucket captured now."""
    if backend.device.type != "cuda" or len(backend.devices) > 1 or not backend.options["cuda_graphs"]:
        return None
    forward = backend.decode_forward
    if mode := backend.options["compile"]:  # True, or one of torch.compile's modes
        forward = torch.compile(forward, mode=None if mode is True else str(mode))
    graphs = DecodeGraphs(forward, backend.device, backend.max_context, backend.max_batch,
                          backend.table.scratch)
    with capturing(len(graphs.batches) * len(graphs.lengths), "decode steps"):
        graphs.capture_all()
    return graphs


def prompt_graphs(backend: Any) -> PromptGraphs | None:
    """Where decode steps replay from graphs (or on the CPU under Triton's interpreter, eagerly
    for tests), packed prompt passes do too: the attention kernel takes its tiles from a tensor."""
    on_cuda = backend.device.type == "cuda"
    if not backend.slot_kernels or (on_cuda and backend.graphs is None) or not head_is_plain(backend):
        return None
    tile = tokens_per_tile(backend.shape.heads, backend.shape.kv_heads)
    # a pass packs many sequences: it can hold more tokens than one sequence's context
    prompts = PromptGraphs(backend.prompt_forward, backend.device, backend.prefill_tokens, backend.max_batch,
                           tile, backend.table.scratch, capture=on_cuda)
    with capturing(len(prompts.graphs), "prompt passes") if on_cuda else contextlib.nullcontext():
        prompts.capture_all()  # on the CPU nothing is captured: the passes run eagerly
    return prompts


@contextlib.contextmanager
def capturing(count: int, what: str) -> Iterator[None]:
    """A spinner while ``count`` graphs are captured, then how long that took (part of the
    start-up that the server's "Ready" line sums up)."""
    began = time.perf_counter()
    with console.status(f"Capturing {count} CUDA graphs for {what}..."), no_collection():
        yield
    console.print(f"Captured {count} CUDA graphs for {what} in {time.perf_counter() - began:.1f} s")


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Python's garbage collector kept from running during captures: objects it frees then (an
    earlier backend's graphs, pinned buffers) make CUDA calls that invalidate a capture."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def head_is_plain(backend: Any) -> bool:
    """Whether the logits are the output head applied to the last hidden states, nothing after
    it (no scaling, no capping): prompt graphs end at the hidden states."""
    n, scratch = 8, backend.table.scratch
    ids = (torch.arange(1, n + 1, device=backend.device) % backend.vocab_size).view(1, n)
    positions = torch.arange(n, device=backend.device).view(1, n)
    slots = torch.full((1, n), scratch, device=backend.device)
    with torch.inference_mode():
        logits = backend.model_step(ids, positions, slots, slice(scratch, scratch + 1), n)
        hidden = backend.model_step(ids, positions, slots, slice(scratch, scratch + 1), n, hidden=True)
        headed = backend.model.get_output_embeddings()(hidden)
    return torch.allclose(headed.float(), logits.float(), rtol=1e-3, atol=1e-3)
