"""The few array operations sampling needs, for numpy and (lazily imported) torch logits.

Sampling rules are written once in ``engine/sampling.py`` against this interface, so a backend whose
logits live on a GPU samples there and only tokens and log-probs cross to the host, in one copy.
It sits below both the backend interface (``Backend.ops``) and the engine.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lmql_core.base.mask_staging import MaskStaging
from lmql_core.base.pinned_ring import HostCopies, Rings


class ArrayOps(Protocol):
    def prepare(self, logits: Any) -> Any: ...  # float32, 2-D
    def bias_row(self, bias: dict[int, float], like: Any, fill: float = 0.0) -> Any: ...  # dense (vocab,) row
    def stack(self, rows: list[Any]) -> Any: ...  # 1-D rows into one 2-D array
    def concat(self, arrays: list[Any]) -> Any: ...  # 2-D arrays, one under the other
    def pick_rows(self, x: Any, rows: list[int]) -> Any: ...  # x[rows], without waiting for the device
    def floats(self, values: list[float], like: Any) -> Any: ...  # a float32 column where ``like`` is
    def add_rows(self, x: Any, rows: list[int], values: Any) -> Any: ...  # x[rows[i]] += values[i]
    def entries(self, rows: list[int], columns: list[int], values: list[float], like: Any) -> Any: ...
    def add_entries(self, x: Any, entries: Any) -> Any: ...  # x[rows[i], columns[i]] += values[i]
    def log_softmax(self, x: Any) -> Any: ...
    def scale_rows(self, x: Any, factors: Any) -> Any: ...  # x[i] * factors[i] (from ``floats``)
    def add_gumbel(self, x: Any, rows: list[int], seed: int) -> Any: ...
    def argmax(self, x: Any) -> Any: ...
    def take(self, x: Any, index: Any) -> Any: ...  # x[i, index[i]]; index: array or list
    # ints: values, with x[i] (x[picked[i]]) at rows[i], where x is
    def place(self, values: list[int], rows: list[int], x: Any, picked: list[int] | None = None) -> Any: ...
    def topk(self, x: Any, k: int) -> tuple[Any, Any]: ...  # sorted, largest first
    def start_host_copy(self, *arrays: Any) -> Any: ...  # queued transfers, one wait for all
    def wait_host_copy(self, pending: Any) -> None: ...  # blocks until that transfer is done
    def finish_host_copy(self, pending: Any) -> list[list[Any]]: ...  # waits, then the values
    def penalize(self, x: Any, row: int, tokens: list[int], penalty: float) -> Any: ...
    def keep_top(self, x: Any, ks: list[int], ps: list[float]) -> Any: ...  # others become -inf
    # tokens whose bit is 0 in ``bits[j]`` (a numpy int32 bitmask, 32 tokens a word) become -inf
    # in row ``rows[j]``, as do tokens beyond the mask's width
    def mask_rows(self, x: Any, rows: list[int], bits: np.ndarray) -> Any: ...
    # optional: best_of(x) -> topk(log_softmax(x), 1), in one pass where the ops can (TorchOps.best_of)


class NumpyOps:
    def prepare(self, logits: Any) -> np.ndarray:
        return np.atleast_2d(np.asarray(logits, dtype=np.float32))

    def bias_row(self, bias: dict[int, float], like: np.ndarray, fill: float = 0.0) -> np.ndarray:
        row = np.full(like.shape[-1], fill, dtype=np.float32)
        row[list(bias)] = list(bias.values())
        return row

    def stack(self, rows: list[Any]) -> np.ndarray:
        return np.stack(rows)

    def concat(self, arrays: list[Any]) -> np.ndarray:
        return np.concatenate([np.asarray(a) for a in arrays])

    def pick_rows(self, x: Any, rows: list[int]) -> np.ndarray:
        return np.asarray(x)[rows]

    def floats(self, values: list[float], like: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def add_rows(self, x: np.ndarray, rows: list[int], values: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[rows] += values
        return x

    def entries(self, rows: list[int], columns: list[int], values: list[float], like: Any) -> Any:
        return np.asarray(rows), np.asarray(columns), np.asarray(values, dtype=np.float32)

    def add_entries(self, x: np.ndarray, entries: Any) -> np.ndarray:
        rows, columns, values = entries
        x = x.copy()
        x[rows, columns] += values
        return x

    def log_softmax(self, x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    def scale_rows(self, x: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return x * factors[:, None]

    def add_gumbel(self, x: np.ndarray, rows: list[int], seed: int) -> np.ndarray:
        x = x.copy()
        rng = np.random.default_rng(seed)
        x[rows] += rng.gumbel(size=(len(rows), x.shape[1])).astype(np.float32)
        return x

    def argmax(self, x: np.ndarray) -> np.ndarray:
        return x.argmax(axis=-1)

    def take(self, x: np.ndarray, index: Any) -> np.ndarray:
        return np.take_along_axis(x, np.asarray(index)[:, None], axis=-1)[:, 0]

    def place(self, values: list[int], rows: list[int], x: np.ndarray,
              picked: list[int] | None = None) -> np.ndarray:
        out = np.array(values, dtype=x.dtype)
        out[rows] = x if picked is None else x[picked]
        return out

    def best_of(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.topk(self.log_softmax(x), 1)

    def topk(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest of each row, best first; among equal values the lowest id first
        (as ``argmax``), so a greedy choice between tied tokens is always the same."""
        k = min(k, x.shape[1])
        if k == 1:
            idx = x.argmax(axis=-1)[:, None]
        else:
            keys = np.where(np.isnan(x), -np.inf, x)  # NaN ranks last (the engine reports it)
            threshold = -np.partition(-keys, k - 1, axis=-1)[:, k - 1 : k]
            tied = keys == threshold
            wanted = k - (keys > threshold).sum(axis=-1, keepdims=True)
            chosen = (keys > threshold) | (tied & (np.cumsum(tied, axis=-1) <= wanted))
            idx = np.nonzero(chosen)[1].reshape(len(x), k)  # exactly k a row, ascending ids
        vals = np.take_along_axis(x, idx, axis=-1)
        order = np.argsort(-vals, axis=-1, kind="stable")
        return np.take_along_axis(vals, order, -1), np.take_along_axis(idx, order, -1)

    def start_host_copy(self, *arrays: Any) -> Any:
        return [np.asarray(a).tolist() for a in arrays]

    def wait_host_copy(self, pending: Any) -> None:
        pass

    def finish_host_copy(self, pending: Any) -> list[list[Any]]:
        return pending

    def penalize(self, x: np.ndarray, row: int, tokens: list[int], penalty: float) -> np.ndarray:
        x = x.copy()
        seen = np.unique(np.asarray(tokens, dtype=np.int64))
        values = x[row, seen]
        x[row, seen] = np.where(values < 0, values * penalty, values / penalty)
        return x

    def keep_top(self, x: np.ndarray, ks: list[int], ps: list[float]) -> np.ndarray:
        order = np.argsort(-x, axis=-1, kind="stable")
        ranked = np.take_along_axis(x, order, -1)
        ranks = np.arange(x.shape[1])[None, :]
        outside_k = ranks >= np.asarray([k or x.shape[1] for k in ks])[:, None]
        # top-p over what top-k left, renormalized (transformers' order of warpers)
        probs = np.where(outside_k, 0.0, np.exp(ranked - ranked[:, :1]))
        probs /= probs.sum(-1, keepdims=True)
        before = np.cumsum(probs, -1) - probs  # probability of the tokens ranked above
        drop = outside_k | (before >= np.asarray(ps, dtype=np.float32)[:, None])
        out = x.copy()
        np.put_along_axis(out, order, np.where(drop, -np.inf, ranked), -1)
        return out


    def mask_rows(self, x: np.ndarray, rows: list[int], bits: np.ndarray) -> np.ndarray:
        allowed = np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=1, bitorder="little")
        allowed = _fit(allowed, x.shape[1]).astype(bool)
        x = x.copy()
        x[rows] = np.where(allowed, x[rows], np.float32(-np.inf))
        return x


def _fit(allowed: Any, width: int) -> Any:
    """A row mask cut or padded (with 0: banned) to ``width`` tokens."""
    if allowed.shape[1] >= width:
        return allowed[:, :width]
    pad = np.zeros((allowed.shape[0], width - allowed.shape[1]), dtype=allowed.dtype)
    return np.concatenate([allowed, pad], axis=1)


class TorchOps:
    """On a GPU nothing here waits for the device: small index tensors travel through pinned
    memory, and results come back through ``start_host_copy``/``finish_host_copy``, so the host
    can queue the next step while this one runs."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.mask_staging = MaskStaging(torch)
        self.rings = Rings(torch)
        self.host_copies = HostCopies(torch)
        self._bits_on: dict[Any, Any] = {}

    def tensor(self, values: Any, device: Any, dtype: Any = None) -> Any:
        """A host list on ``device``, copied without waiting for the work queued there."""
        if self.torch.device(device).type == "cuda":
            staged = self.rings.get().values_to_device(values, dtype, device)
            if staged is not None:
                return staged
        return self.to_device(self.torch.tensor(values, dtype=dtype), device)

    def to_device(self, host: Any, device: Any) -> Any:
        """A host tensor on ``device``, copied without waiting for the work queued there."""
        if self.torch.device(device).type != "cuda":
            return host
        staged = self.rings.get().to_device(host, device)
        return host.pin_memory().to(device, non_blocking=True) if staged is None else staged

    def prepare(self, logits: Any) -> Any:
        if logits.dtype is self.torch.float32 and logits.dim() == 2:  # as graphs return them
            return logits
        return logits.float().reshape(-1, logits.shape[-1])

    def bias_row(self, bias: dict[int, float], like: Any, fill: float = 0.0) -> Any:
        # built where it is used: only the entries travel, and the host does no vocabulary-wide
        # work (on a busy host that work, and pinning it, cost 15 ms per stream: measured)
        t = self.torch
        row = t.full((like.shape[-1],), fill, dtype=t.float32, device=like.device)
        index = self.tensor(list(bias), like.device, t.long)
        row[index] = self.tensor(list(bias.values()), like.device, t.float32)
        return row

    def stack(self, rows: list[Any]) -> Any:
        return rows[0][None] if len(rows) == 1 else self.torch.stack(rows)

    def concat(self, arrays: list[Any]) -> Any:
        return self.torch.cat(arrays)

    def pick_rows(self, x: Any, rows: list[int]) -> Any:
        # (a list as the index would be copied to the device blocking, after all the work queued there)
        return x[self.tensor(rows, x.device)]

    def floats(self, values: list[float], like: Any) -> Any:
        return self.tensor(values, like.device, self.torch.float32)

    def add_rows(self, x: Any, rows: list[int], values: Any) -> Any:
        if len(rows) == x.shape[0]:  # every row (rows are distinct and in order): no scatter
            return x + values
        x = x.clone()
        x[self.tensor(rows, x.device)] += values
        return x

    def entries(self, rows: list[int], columns: list[int], values: list[float], like: Any) -> Any:
        t = self.torch
        return (self.tensor(rows, like.device, t.long), self.tensor(columns, like.device, t.long),
                self.tensor(values, like.device, t.float32))

    def add_entries(self, x: Any, entries: Any) -> Any:
        rows, columns, values = entries  # (no entry twice: summing them is adding each)
        return x.clone().index_put_((rows, columns), values, accumulate=True)

    def log_softmax(self, x: Any) -> Any:
        return self.torch.log_softmax(x, dim=-1)

    def scale_rows(self, x: Any, factors: Any) -> Any:
        return x * factors[:, None]

    def add_gumbel(self, x: Any, rows: list[int], seed: int) -> Any:
        t = self.torch
        gen = t.Generator(device=x.device).manual_seed(seed)
        uniform = t.rand((len(rows), x.shape[1]), generator=gen, device=x.device)
        noise = -t.log(-t.log(uniform.clamp_(min=1e-20)))
        x = x.clone()
        x[self.tensor(rows, x.device)] += noise
        return x

    def argmax(self, x: Any) -> Any:
        return x.argmax(dim=-1)

    def take(self, x: Any, index: Any) -> Any:
        if isinstance(index, list):
            index = self.tensor(index, x.device)
        return x.gather(-1, index[:, None])[:, 0]

    def place(self, values: list[int], rows: list[int], x: Any, picked: list[int] | None = None) -> Any:
        """Host ``values`` beside ``x``'s on the device (sampled tokens never read by the host)."""
        out = self.tensor(values, x.device, x.dtype)
        out[self.tensor(rows, x.device)] = x if picked is None else x[self.tensor(picked, x.device)]
        return out

    def best_of(self, x: Any) -> tuple[Any, Any]:
        """Each row's best token and its log-softmax value, (rows, 1) each (a backend's ops may
        take both in one pass over the row)."""
        return self.topk(self.log_softmax(x), 1)

    def topk(self, x: Any, k: int) -> tuple[Any, Any]:
        """As ``NumpyOps.topk``: among equal values the lowest id first, without a host sync."""
        t = self.torch
        if k == 1:  # one reduction instead of a selection (LMQL clients mostly ask for one)
            # max returns the first of equal maxima, as argmax does, and its value: one pass over
            # the vocabulary instead of argmax's slower one and a gather (2.1 -> 0.8 ms, 32 x 50k rows)
            return x.max(dim=-1, keepdim=True)
        k = min(k, x.shape[1])
        keys = t.nan_to_num(x, nan=float("-inf"))
        threshold = keys.topk(k, dim=-1).values[:, -1:]
        tied = keys == threshold
        wanted = k - (keys > threshold).sum(dim=-1, keepdim=True)
        chosen = (keys > threshold) | (tied & (tied.cumsum(dim=-1) <= wanted))
        ids = t.arange(x.shape[1], device=x.device)
        # the chosen ids, lowest first: rank them by how far from the end they are (no ties)
        indices = t.where(chosen, x.shape[1] - ids, 0).topk(k, dim=-1).indices
        values = x.gather(-1, indices)
        order = (-values).sort(dim=-1, stable=True).indices
        return values.gather(-1, order), indices.gather(-1, order)

    def penalize(self, x: Any, row: int, tokens: list[int], penalty: float) -> Any:
        seen = self.tensor(sorted(set(tokens)), x.device)
        values = x[row, seen]
        x = x.clone()
        x[row, seen] = self.torch.where(values < 0, values * penalty, values / penalty)
        return x

    def keep_top(self, x: Any, ks: list[int], ps: list[float]) -> Any:
        t = self.torch
        ranked, order = x.sort(dim=-1, descending=True)
        ranks = t.arange(x.shape[1], device=x.device)[None, :]
        outside_k = ranks >= self.tensor([k or x.shape[1] for k in ks], x.device)[:, None]
        # top-p over what top-k left, renormalized (transformers' order of warpers)
        probs = t.softmax(ranked.masked_fill(outside_k, float("-inf")), dim=-1)
        before = probs.cumsum(-1) - probs  # probability of the tokens ranked above
        drop = outside_k | (before >= self.tensor(ps, x.device, x.dtype)[:, None])
        return x.scatter(-1, order, ranked.masked_fill(drop, float("-inf")))

    def mask_rows(self, x: Any, rows: list[int], bits: np.ndarray) -> Any:
        t = self.torch
        if len(rows) < x.shape[0] and 32 * bits.shape[1] >= x.shape[1]:
            # the other rows as masks that allow every token: one ``where`` for the batch instead
            # of a gather and a scatter (each device operation costs the engine thread its launch)
            every = np.full((x.shape[0], bits.shape[1]), -1, dtype=np.int32)
            every[rows] = bits
            rows, bits = list(range(x.shape[0])), every
        allowed = self._allowed(bits, x)
        if len(rows) == x.shape[0]:  # every row (rows are distinct and in order): no gather, no scatter
            return t.where(allowed, x, float("-inf"))
        x = x.clone()
        index = self.tensor(rows, x.device)
        x[index] = x[index].masked_fill(~allowed, float("-inf"))
        return x

    def _allowed(self, bits: np.ndarray, x: Any) -> Any:
        """``bits`` (int32 words, a row each) as booleans on ``x``'s device, as wide as its rows."""
        t = self.torch
        if x.device.type == "cpu":  # one numpy call (~15 us) rather than five torch ones (~60)
            unpacked = np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=1, count=x.shape[1],
                                     bitorder="little")
            return t.from_numpy(unpacked.view(np.bool_))
        packed = self.mask_staging.to_device(bits, x.device)
        allowed = ((packed[:, :, None] & self._bit_values(x.device)) != 0).view(len(bits), -1)
        if allowed.shape[1] >= x.shape[1]:
            return allowed[:, : x.shape[1]]
        return t.nn.functional.pad(allowed, (0, x.shape[1] - allowed.shape[1]), value=False)

    def _bit_values(self, device: Any) -> Any:
        """1, 2, 4, ..., 128 on ``device`` (a byte's bits, the lowest first), made once."""
        values = self._bits_on.get(device)
        if values is None:
            values = self._bits_on[device] = self.tensor([1 << i for i in range(8)], device, self.torch.uint8)
        return values

    def start_host_copy(self, *arrays: Any) -> Any:
        # each array into pinned memory as it is (no casts, no concatenation: every call is a
        # turn for the interpreter's lock), then one event for all of them
        return self.host_copies.start(arrays)

    def wait_host_copy(self, pending: Any) -> None:
        self.host_copies.wait(pending)

    def finish_host_copy(self, pending: Any) -> list[list[Any]]:
        return self.host_copies.finish(pending)
