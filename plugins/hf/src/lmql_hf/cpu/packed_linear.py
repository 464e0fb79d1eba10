"""Linear layers on the CPU through oneDNN, their weights packed once in its blocked layout.

MKL's products of a few rows run far below what the processor can do on some CPUs: on a 2-vCPU
AMD EPYC, Qwen3-0.6B's shapes at 8 rows take 3.6 ms (q/k/v), 3.9 (gate/up) and 1.2 (down) by
MKL, 1.0, 1.1 and 0.4 by oneDNN with a packed weight (``torch.ops.mkldnn._linear_pointwise``,
the operator torch.compile's CPU code calls). ``PackedLinear`` replaces a model's ``nn.Linear``
or GPT-2 ``Conv1D``, holding only the packed weight, so transformers' own forward (prompt
passes) and the lean decode step both use it, and no weight is held twice. Which kinds of layer
are packed: ``packed_roles`` (by default those whose first layer times faster packed). The
products the lean step calls, packed or by MKL (``side_by_side``, ``by_columns_product``), and
the output head's packed form (head_product.py) come from here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
from torch import nn

PACKED_FOR_ROWS = 64  # oneDNN's hint for the rows it will see; any number of rows works
TIMED_ROWS = (1, 8, 32)  # decode steps of few and of many streams
MUST_SAVE = 0.9  # packed only where it takes at most this share of the modules' own time
TIMED_ROUNDS = 3


Product = Callable[[torch.Tensor], torch.Tensor]  # x (rows, in) -> x @ W.T + bias, (rows, out)
# x (rows, in), residual (rows, out) -> residual + (x @ W.T + bias): a layer's output added to its input
PlusProduct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@cache
def available() -> bool:
    """Whether this torch has oneDNN's packed linear operators (and they run)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        out = packed_product(torch.ones(2, 8), pack(torch.ones(4, 8)))
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.equal(out, torch.full((2, 4), 8.0)))


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` of (out, in) in oneDNN's blocked layout for its products."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACKED_FOR_ROWS)


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for ``x`` of (rows, in) and ``packed`` from ``pack(W)``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def by_columns_product(weight: torch.Tensor, bias: torch.Tensor | None) -> Product:
    """``x @ weight (+ bias)`` for a weight by columns (in, out): MKL."""
    if bias is None:
        return lambda x: torch.mm(x, weight)
    return lambda x: torch.addmm(bias, x, weight)


def plus_by_columns(weight: torch.Tensor, bias: torch.Tensor | None) -> PlusProduct:
    """``residual + x @ weight (+ bias)`` for a weight by columns (in, out): one MKL call, the
    sum in the product's own pass (no bias), or the bias there and the residual added after."""
    if bias is None:
        return lambda x, residual: torch.addmm(residual, x, weight)
    return lambda x, residual: torch.addmm(bias, x, weight).add_(residual)


def plus_packed(module: PackedLinear) -> PlusProduct:
    """``residual + x @ W.T (+ bias)`` for a packed module."""
    return lambda x, residual: module.product(x).add_(residual)


def side_by_side(modules: Sequence[PackedLinear]) -> Product:
    """The packed modules' products of one input, concatenated."""
    if len(modules) == 1:
        return modules[0].product
    return lambda x: torch.cat([m.product(x) for m in modules], -1)


def by_columns(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (in, sum of outs) contiguous weight (and bias) for ``linears``, whose modules keep
    transposed views of it (no second copy). MKL's products of a few rows read a weight ~1.3-2x
    faster by columns than by rows (one row, 192 x 576: 7.9 -> 4.7 us; the 4-layer GPT-2's head,
    8 rows, one core: 5.5 -> 2.6 ms)."""
    weight = torch.cat([m.weight.detach().T for m in linears], 1).contiguous()
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    start = 0
    for m in linears:
        outs = m.weight.shape[0]
        m.weight = nn.Parameter(weight[:, start : start + outs].T, requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start : start + outs], requires_grad=False)
        start += outs
    return weight, bias


def plus_product_of(module: Any) -> PlusProduct:
    """A layer's last product with the residual added (``plus_by_columns``)."""
    if isinstance(module, PackedLinear):
        return plus_packed(module)
    if isinstance(module, nn.Linear):
        return plus_by_columns(*by_columns([module]))
    return plus_by_columns(module.weight.detach(), module.bias)


def product_of(modules: list[Any]) -> Product:
    """One product over the outputs of ``modules`` side by side: their packed products
    concatenated where they were packed, else one product over their weights
    by columns (``nn.Linear``s become views of it; GPT-2's ``Conv1D``s are by columns already)."""
    if all(isinstance(m, PackedLinear) for m in modules):
        return side_by_side(modules)
    if isinstance(modules[0], nn.Linear):
        return by_columns_product(*by_columns(modules))
    (module,) = modules
    return by_columns_product(module.weight.detach(), module.bias)


class PackedLinear(nn.Module):
    """``x @ W.T + bias`` for a weight ``W`` of (out, in), held packed for oneDNN only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = pack(weight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @staticmethod
    def of(module: Any) -> PackedLinear:
        """The packed equivalent of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight (in, out))."""
        weight = module.weight if isinstance(module, nn.Linear) else module.weight.T
        return PackedLinear(weight, module.bias)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """For ``x`` of (rows, in)."""
        return packed_product(x, self.packed, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.product(x.reshape(-1, self.in_features))
        return flat.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


Role = Sequence[tuple[str, str]]  # (child of the layer, its linear module), e.g. ("mlp", "down_proj")


def packed_roles(layers: Sequence[Any], roles: dict[str, Role], wanted: bool | None) -> set[str]:
    """Pack the linear modules of every layer for the roles chosen, in place; those roles.
    ``wanted``: True every role, False none, None those whose first layer's modules take at most
    MUST_SAVE of their own time packed (on the threads the caller set)."""
    if wanted is False or not layers or not available():
        return set()
    chosen = {name for name, role in roles.items() if wanted or _packing_saves(layers[0], role)}
    for layer in layers:
        for name in chosen:
            for child, attribute in roles[name]:
                parent = getattr(layer, child)
                setattr(parent, attribute, PackedLinear.of(getattr(parent, attribute)))
    return chosen


def _modules(layer: Any, role: Role) -> list[Any]:
    return [getattr(getattr(layer, child), attribute) for child, attribute in role]


def columns_of(module: Any) -> torch.Tensor:
    """A linear module's weight as (in, out): ``nn.Linear`` holds (out, in), ``Conv1D`` (in, out)."""
    return module.weight.detach().T if isinstance(module, nn.Linear) else module.weight.detach()


def _packing_saves(layer: Any, role: Role) -> bool:
    """Whether the role's product packed (one per module, side by side) takes at most MUST_SAVE
    of the time of the lean step's unpacked one (one product over the modules' weights by
    columns), each the least of TIMED_ROUNDS rounds, the two taking turns, summed over TIMED_ROWS."""
    modules = _modules(layer, role)
    weight = torch.cat([columns_of(m) for m in modules], 1).contiguous()
    bias = None if modules[0].bias is None else torch.cat([m.bias.detach() for m in modules])
    own, packed = by_columns_product(weight, bias), side_by_side([PackedLinear.of(m) for m in modules])
    totals = [0.0, 0.0]
    with torch.no_grad():
        for rows in TIMED_ROWS:
            x = torch.randn(rows, weight.shape[0])
            best = [float("inf"), float("inf")]
            for round_ in range(TIMED_ROUNDS + 1):  # the first untimed
                for i, product in enumerate((own, packed)):
                    began = time.perf_counter()
                    product(x)
                    if round_:
                        best[i] = min(best[i], time.perf_counter() - began)
            totals = [total + b for total, b in zip(totals, best, strict=True)]
    return totals[1] <= MUST_SAVE * totals[0]
