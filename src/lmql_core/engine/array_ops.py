"""The few array operations sampling needs, for numpy and (lazily imported) torch logits.

Sampling rules are written once in ``sampling.py`` against this interface, so a backend whose
logits live on a GPU samples there and only tokens and log-probs cross to the host.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ArrayOps(Protocol):
    def prepare(self, logits: Any) -> Any: ...  # float32, 2-D
    def add_at(self, x: Any, rows: list[int], cols: list[int], values: list[float]) -> Any: ...
    def log_softmax(self, x: Any) -> Any: ...
    def scale_rows(self, x: Any, factors: list[float]) -> Any: ...
    def add_gumbel(self, x: Any, rows: list[int], seed: int) -> Any: ...
    def argmax(self, x: Any) -> Any: ...
    def take(self, x: Any, index: Any) -> Any: ...  # x[i, index[i]]; index: array or list
    def topk(self, x: Any, k: int) -> tuple[Any, Any]: ...
    def to_list(self, x: Any) -> list[Any]: ...


class NumpyOps:
    def prepare(self, logits: Any) -> np.ndarray:
        return np.atleast_2d(np.asarray(logits, dtype=np.float32))

    def add_at(self, x: np.ndarray, rows: list[int], cols: list[int], values: list[float]):
        x = x.copy()
        np.add.at(x, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)), values)
        return x

    def log_softmax(self, x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    def scale_rows(self, x: np.ndarray, factors: list[float]) -> np.ndarray:
        return x * np.asarray(factors, dtype=np.float32)[:, None]

    def add_gumbel(self, x: np.ndarray, rows: list[int], seed: int) -> np.ndarray:
        x = x.copy()
        rng = np.random.default_rng(seed)
        x[rows] += rng.gumbel(size=(len(rows), x.shape[1])).astype(np.float32)
        return x

    def argmax(self, x: np.ndarray) -> np.ndarray:
        return x.argmax(axis=-1)

    def take(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, np.asarray(index)[:, None], axis=-1)[:, 0]

    def topk(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argpartition(-x, k - 1, axis=-1)[:, :k] if k < x.shape[1] else np.tile(
            np.arange(x.shape[1]), (x.shape[0], 1)
        )
        vals = np.take_along_axis(x, idx, axis=-1)
        order = np.argsort(-vals, axis=-1, kind="stable")
        return np.take_along_axis(vals, order, -1), np.take_along_axis(idx, order, -1)

    def to_list(self, x: np.ndarray) -> list[Any]:
        return np.asarray(x).tolist()


class TorchOps:
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def prepare(self, logits: Any) -> Any:
        return logits.float().reshape(-1, logits.shape[-1])

    def add_at(self, x: Any, rows: list[int], cols: list[int], values: list[float]) -> Any:
        t = self.torch
        index = (t.tensor(rows, device=x.device), t.tensor(cols, device=x.device))
        return x.index_put(index, t.tensor(values, device=x.device, dtype=x.dtype), accumulate=True)

    def log_softmax(self, x: Any) -> Any:
        return self.torch.log_softmax(x, dim=-1)

    def scale_rows(self, x: Any, factors: list[float]) -> Any:
        return x * self.torch.tensor(factors, device=x.device, dtype=x.dtype)[:, None]

    def add_gumbel(self, x: Any, rows: list[int], seed: int) -> Any:
        t = self.torch
        gen = t.Generator(device=x.device).manual_seed(seed)
        uniform = t.rand((len(rows), x.shape[1]), generator=gen, device=x.device)
        noise = -t.log(-t.log(uniform.clamp_(min=1e-20)))
        x = x.clone()
        x[t.tensor(rows, device=x.device)] += noise
        return x

    def argmax(self, x: Any) -> Any:
        return x.argmax(dim=-1)

    def take(self, x: Any, index: Any) -> Any:
        if isinstance(index, list):
            index = self.torch.tensor(index, device=x.device)
        return x.gather(-1, index[:, None])[:, 0]

    def topk(self, x: Any, k: int) -> tuple[Any, Any]:
        values, indices = x.topk(min(k, x.shape[1]), dim=-1)
        return values, indices

    def to_list(self, x: Any) -> list[Any]:
        return x.tolist()
