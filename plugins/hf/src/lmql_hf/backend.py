"""The HF backend: batched forward passes of a ``transformers`` causal LM with per-sequence caches.

Each step stacks the sequences' caches into one padded batch: past tokens are left-padded to
the longest past, new tokens left-padded to the most new tokens, and the attention mask hides
the padding. So prompts (prefill) and single decode tokens of different streams share one pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, DynamicCache

from lmql_core.backend import Backend, StepInput, StepOutput
from lmql_core.engine.array_ops import TorchOps
from lmql_hf import loading
from lmql_hf.bundled import resolve

console = Console(stderr=True)


@dataclass
class SequenceCache:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (1, heads, length, head_dim)

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2] if self.layers else 0


class HFBackend(Backend):
    def __init__(self, model: str, *, cuda: bool = False, dtype: str | None = None,
                 **kwargs: Any) -> None:
        self.name = model
        self.path = resolve(model)
        self.kwargs = loading.loader_kwargs(cuda, dtype, kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, **self.kwargs).eval()
        self.device = self.model.get_input_embeddings().weight.device
        config = self.model.config
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_token_id = _first(self.model.generation_config.eos_token_id or config.eos_token_id)
        self.max_context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None)
        self.ops = TorchOps()
        # transformers 5.x renamed `past_key_values` to `cache`; both fill the object in place
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._caches: dict[int, SequenceCache] = {}

    @torch.inference_mode()
    def forward(self, batch: list[StepInput]) -> StepOutput:
        caches = [self._caches.get(item.seq_id, SequenceCache([])) for item in batch]
        past_len = max(c.length for c in caches)
        new_len = max(len(item.tokens) for item in batch)
        input_ids = torch.zeros((len(batch), new_len), dtype=torch.long)
        mask = torch.zeros((len(batch), past_len + new_len), dtype=torch.long)
        positions = torch.zeros((len(batch), new_len), dtype=torch.long)
        for row, (item, cache) in enumerate(zip(batch, caches, strict=True)):
            n = len(item.tokens)
            input_ids[row, new_len - n :] = torch.tensor(item.tokens)
            mask[row, past_len - cache.length : past_len] = 1
            mask[row, past_len + new_len - n :] = 1
            positions[row, new_len - n :] = torch.arange(cache.length, cache.length + n)
        cache = self._stack(caches, past_len)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        self._unstack(batch, caches, cache, past_len, new_len)
        logits = out.logits
        every = {item.seq_id: logits[row, new_len - len(item.tokens) :]
                 for row, item in enumerate(batch) if item.all_logits}
        return StepOutput(logits[:, -1], every)

    def _stack(self, caches: list[SequenceCache], past_len: int) -> DynamicCache:
        if past_len == 0:
            return DynamicCache(config=self.model.config)
        layers = []
        for i in range(self.model.config.num_hidden_layers):
            keys, values = [], []
            for cache in caches:
                k, v = cache.layers[i] if cache.layers else self._empty(i, past_len)
                pad = past_len - k.shape[-2]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _empty(self, layer: int, past_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = next(c.layers[layer] for c in self._caches.values() if c.layers)
        shape = (1, k.shape[1], 0, k.shape[3])
        return k.new_zeros(shape), v.new_zeros(shape)

    def _unstack(self, batch: list[StepInput], caches: list[SequenceCache], cache: Any,
                 past_len: int, new_len: int) -> None:
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        for row, (item, old) in enumerate(zip(batch, caches, strict=True)):
            keep = torch.cat([torch.arange(past_len - old.length, past_len),
                              torch.arange(past_len + new_len - len(item.tokens), past_len + new_len)])
            self._caches[item.seq_id] = SequenceCache(
                [(k[row : row + 1, :, keep.to(k.device)], v[row : row + 1, :, keep.to(v.device)])
                 for k, v in kv]
            )

    def release(self, seq_id: int) -> None:
        self._caches.pop(seq_id, None)

    def info(self) -> dict[str, Any]:
        return {
            "backend": "hf",
            "model_class": type(self.model).__name__,
            "path": self.path,
            "constructor": loading.constructor_call(self.path, self.kwargs),
            "devices": loading.devices_of(self.model),
            "layers": loading.layer_placement(self.model),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "versions": loading.versions(),
        }

    def tokenizer_files(self) -> dict[str, str]:
        from lmql_core.tokenizer import find_tokenizer_json

        found = find_tokenizer_json(self.path)
        return {"tokenizer.json": str(found)} if found else {}

    def close(self) -> None:
        self._caches.clear()


def _first(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return None if value is None else int(value)
