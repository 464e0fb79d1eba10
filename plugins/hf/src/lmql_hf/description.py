"""What the HF backend tells about itself (``Backend.info``, the server's /info)."""

from __future__ import annotations

from typing import Any

from lmql_hf.loading import weights


def describe(backend: Any) -> dict[str, Any]:
    """``HFBackend.info``: the model, where its layers and cache live, and the paths its steps take."""
    return {
        "backend": "hf",
        "model_class": type(backend.model).__name__,
        "path": backend.path,
        "constructor": weights.constructor_call(backend.path, backend.kwargs),
        "devices": backend.devices,
        "layers": weights.layer_placement(backend.model),
        "dtype": str(backend.model.dtype).removeprefix("torch."),
        "max_batch": backend.max_batch,
        "max_batch_from": backend.memory.source,  # "memory" (as many as fit), "given", "default"
        "kv_cache": {"slots": backend.cache.slots, "max_len": backend.max_context,
                     "bytes": backend.cache.slots * backend.memory.slot_bytes,
                     "reserved_bytes": backend.memory.reserved_bytes,
                     "cuda_graphs": backend.graphs is not None, "fused_modules": backend.fused_modules,
                     "graphs": backend.captures_left.captured(),  # captured so far, of how many
                     "chained_steps": backend.chains_steps, "lean_decode": backend.lean is not None,
                     "head_forms": backend.lean.head.forms if backend.lean is not None else None,
                     "packed_linears": sorted(backend.lean.packed_roles) if backend.lean is not None else [],
                     "reused_prefix_tokens": backend.table.reused_tokens},
        "warm_up_s": None if backend.warm_up_seconds is None else round(backend.warm_up_seconds, 3),
        "versions": weights.versions(),
    }
