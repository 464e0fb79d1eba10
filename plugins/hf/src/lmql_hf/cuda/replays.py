"""Which passes of the HF backend replay from CUDA graphs, and when their graphs are captured.

Decode steps (graphs.py) replay on one GPU unless ``--cuda_graphs False``; packed prompt passes
(prompt_graphs.py) where decode steps do and the slot-cache attention kernels run, for models
whose logits are the output head applied to the last hidden states. Before "Ready" every prompt
pass's graph is captured, and of the decode steps' the first requests' and each batch's cover
(``--capture_all True``: every graph); the others while the engine idles (``HFBackend.idle``), a
capture at a time, a step meanwhile replaying its batch's cover.
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
# graphs left to capture wait until the engine has idled this long (counted from the warm-up
# before Ready, then from the last step): requests that follow each other closely (a query's
# calls, a burst, a client's first request after connecting) then do not find the engine inside a
# capture (20-75 ms)
IDLE_CAPTURE_AFTER_S = 1.0


def decode_graphs(backend: Any) -> DecodeGraphs | None:
    """Decode steps of one GPU's model replay from graphs, the first requests' captured now."""
    if backend.device.type != "cuda" or len(backend.devices) > 1 or not backend.options["cuda_graphs"]:
        return None
    forward = backend.decode_forward
    if mode := backend.options["compile"]:  # True, or one of torch.compile's modes
        forward = torch.compile(forward, mode=None if mode is True else str(mode))
    # a compiled forward compiles again for every new shape: all of that before Ready
    everything = bool(backend.options["capture_all"] or backend.options["compile"])
    graphs = DecodeGraphs(forward, backend.device, backend.lengths, backend.max_batch,
                          backend.table.scratch, everything, int(backend.options["capture_at_use"]))
    with capturing(len(graphs.plan.first), "decode steps", len(graphs.plan.order)):
        torch.cuda.empty_cache()  # what the loading left cached: free for the graphs' pool
        graphs.capture_first()
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
                           tile, backend.table.scratch, capture=on_cuda,
                           capture_at_use=int(backend.options["capture_at_use"]))
    if on_cuda:  # on the CPU nothing is captured: the passes run eagerly
        with capturing(len(prompts.plan.first), "prompt passes", len(prompts.graphs)):
            prompts.capture_first()
    return prompts


class CapturesLeft:
    """The graphs that neither "Ready" nor a request has captured yet: one a call of
    ``capture_one`` (the engine's idle time, ``Backend.idle``), decode steps' and prompt passes' in
    turn, once the backend has not stepped for ``IDLE_CAPTURE_AFTER_S`` (``backend.stepped_at``)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        on_cuda = backend.device.type == "cuda"
        self.kinds = [g for g in (backend.graphs, backend.prompts) if g is not None and on_cuda]
        self.sources = list(self.kinds)  # those with graphs left, in turn
        backend.stepped_at = time.perf_counter()

    def captured(self) -> dict[str, int]:
        """How many graphs are captured now, and of how many (for MODEL_INFO)."""
        return {"captured": sum(len(g.plan.captured) for g in self.kinds),
                "of": sum(len(g.plan.order) for g in self.kinds)}

    def capture_one(self) -> float | None:
        """Seconds until the next call is due (0: at once), or None when nothing is left."""
        if not self.sources:
            return None
        wait = self.backend.stepped_at + IDLE_CAPTURE_AFTER_S - time.perf_counter()
        if wait > 0:
            return wait
        source = self.sources.pop(0)
        with torch.inference_mode():
            if source.capture_next():
                self.sources.append(source)
        return 0.0 if self.sources else None


@contextlib.contextmanager
def capturing(count: int, what: str, of: int) -> Iterator[None]:
    """A spinner while ``count`` graphs (of ``of``) are captured, then how long that took (part
    of the start-up that the server's "Ready" line sums up)."""
    began = time.perf_counter()
    with console.status(f"Capturing {count} CUDA graphs for {what}..."), no_collection():
        yield
    rest = f" ({of - count} more while idle)" if of > count else ""
    console.print(f"Captured {count} CUDA graphs for {what} in {time.perf_counter() - began:.1f} s{rest}")


@contextlib.contextmanager
def no_collection(collect: bool = True) -> Iterator[None]:
    """Python's garbage collector kept from running during captures: objects it frees then (an
    earlier backend's graphs, pinned buffers) make CUDA calls that invalidate a capture. With
    ``collect``, a collection first (at start-up; not between requests, where it takes long)."""
    if collect:
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
