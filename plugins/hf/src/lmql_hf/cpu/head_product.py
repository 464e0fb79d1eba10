"""The output head's product on the CPU (``lean_decode``), by whichever call form this processor
runs fastest for each number of rows, measured at warm-up.

One product, ``x @ W.T``, reaches the CPU's libraries several ways: MKL with the weight by rows
(as the model holds it) or by columns, the result as (rows, vocabulary) or as its transpose, or
oneDNN with the weight packed in its own blocked layout. Each runs a different kernel, and which
is fastest depends on the processor and the number of rows: for a 4-layer GPT-2's head (50,257 x
256) on two cores of an AMD EPYC, 1 / 8 / 32 rows take 2.0 / 8.6 / 12.3 ms by columns, 7.0 / 5.3
/ 11.7 by rows written transposed, 1.9 / 2.1 / 5.2 packed for oneDNN; on an Intel Xeon by
columns beat transformers' own form by 1.3-2x. The head is most of a small model's decode step
on the CPU, so each bucket of rows takes the form measured fastest (``tune``), and layouts no
bucket chose are let go. Until then, by columns.

A head too large to copy by columns (Llama-3's 128,256 x 2,048, Qwen3's 151,936 x 1,024) is
still worth packing: on that EPYC oneDNN's form takes 28 / 61 ms at 8 / 32 rows for Qwen3's head
where MKL's best takes 84 / 140. Its product is slow whatever the form, so it is timed for one
row and for the batch's rows only, once each (~1-2 s on two cores), and its packed copy is made
only then, and kept only if chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from lmql_hf.cpu import packed_linear

# a form: the layout of the weight it reads, and x, that weight -> x @ W.T as (rows, vocabulary),
# contiguous (the sampler reads each row's logits)
FORMS: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "x @ columns": ("columns", torch.mm),
    "(rows @ x.T).T": ("rows", lambda x, weight: (weight @ x.T).T.contiguous()),
    "oneDNN packed": ("onednn", packed_linear.packed_product),
}
DEFAULT_FORM = "x @ columns"
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# each form's time is the least of this many rounds, after an untimed one: ~0.7 s for that GPT-2
TIMED_ROUNDS = 3
# a head whose single-row product takes longer is timed at two buckets, one round each: timing
# every bucket takes ~250 times that (11.6 s for Qwen3's head on two cores, against ~2 s)
TUNE_BELOW_S = 0.01


class HeadProduct:
    """``x @ W.T`` for the head's weight ``W`` (vocabulary, hidden). ``copies``: whether it may
    also be held by columns (not a head too large to hold twice; the view by columns then)."""

    def __init__(self, weight: torch.Tensor, copies: bool) -> None:
        self.layouts = {"rows": weight, "columns": weight.T.contiguous() if copies else weight.T}
        self.forms: dict[int, str] = {}  # bucket of rows -> the form chosen for it

    def hold_every_layout(self) -> None:
        """Also hold the weight packed for oneDNN, where this torch has it (``tune`` does; until
        then no memory goes to a copy that may not be chosen)."""
        if packed_linear.available() and "onednn" not in self.layouts:
            self.layouts["onednn"] = packed_linear.pack(self.layouts["rows"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layout, product = FORMS[self.form_for(x.shape[0])]
        return product(x, self.layouts[layout])

    def form_for(self, rows: int) -> str:
        """The form chosen for the smallest bucket timed of at least ``rows``, else for the
        largest timed (a prompt pass's or a SCORE's rows can outnumber the batch's); the default
        before ``tune``."""
        if not self.forms:
            return DEFAULT_FORM
        bucket = next((b for b in ROW_BUCKETS if b >= rows and b in self.forms), max(self.forms))
        return self.forms[bucket]

    def available(self) -> list[str]:
        return [name for name, (layout, _) in FORMS.items() if layout in self.layouts]

    def tune(self, most_rows: int) -> dict[int, str]:
        """Time every form for each bucket up to ``most_rows`` rows (on the threads the caller
        set), keep the fastest, let go of the layouts none chose; the choices, by bucket."""
        self.hold_every_layout()
        hidden = self.layouts["rows"].shape[1]
        # probed by rows, the layout always kept (an earlier tune may have let go of the default's)
        slow = self._seconds("(rows @ x.T).T", torch.zeros(1, hidden)) > TUNE_BELOW_S
        top = next((b for b in ROW_BUCKETS if b >= most_rows), ROW_BUCKETS[-1])
        needed = [b for b in ROW_BUCKETS if b <= top]
        for bucket in [needed[0], needed[-1]] if slow else needed:
            x = torch.randn(bucket, hidden, generator=torch.Generator().manual_seed(bucket))
            self.forms[bucket] = self._fastest(x, rounds=1 if slow else TIMED_ROUNDS)
        kept = {FORMS[name][0] for name in self.forms.values()} | {"rows"}
        self.layouts = {layout: weight for layout, weight in self.layouts.items() if layout in kept}
        return self.forms

    def _fastest(self, x: torch.Tensor, rounds: int) -> str:
        """The form whose product of ``x`` took least in ``rounds`` rounds, after an untimed
        one; the forms take turns, so a moment of contention for the cores slows all of them."""
        names = self.available()
        for name in names:
            self._seconds(name, x)
        times = dict.fromkeys(names, float("inf"))
        for _ in range(rounds):
            for name in names:
                times[name] = min(times[name], self._seconds(name, x))
        return min(times, key=times.__getitem__)

    def _seconds(self, name: str, x: torch.Tensor) -> float:
        layout, product = FORMS[name]
        began = time.perf_counter()
        product(x, self.layouts[layout])
        return time.perf_counter() - began

