"""On a GPU: the greedy choice kernel (lmql_hf.kernels.best_kernel) against torch's log_softmax and
max on random logits of the three benchmark vocabularies, with ties and banned tokens; prints OK or
MISMATCH and the kernel's time against torch's for one row and 64.

    python scripts/best_of_check.py
"""

from __future__ import annotations

import torch

from lmql_hf.kernels import best_kernel


def timed_us(fn, reps: int = 200) -> float:  # noqa: ANN001
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1000


def check() -> bool:
    ok = True
    # the inputs drawn on the host: after a CUDA graph capture in the same process (gpu_check.py),
    # torch's default CUDA generator refused to draw eagerly ("Offset increment outside graph capture")
    rng = torch.Generator().manual_seed(3)
    for vocabulary in (50257, 128256, 151936):
        for rows in (1, 64):
            logits = (torch.randn(rows, vocabulary, generator=rng) * 5).cuda()
            logits[0, [11, vocabulary - 2]] = 80.0  # a tie: the first id wins
            if rows > 1:
                logits[1, (torch.rand(vocabulary, generator=rng) < 0.7).cuda()] = float("-inf")
            values, indices = best_kernel.best_of(logits)
            want_values, want_indices = torch.log_softmax(logits, -1).max(-1, keepdim=True)
            same = torch.equal(indices, want_indices) and torch.allclose(values, want_values, 1e-5, 1e-5)
            ok = ok and same
            kernel_us = timed_us(lambda logits=logits: best_kernel.best_of(logits))
            torch_us = timed_us(lambda logits=logits: torch.log_softmax(logits, -1).max(-1, keepdim=True))
            print(f"vocabulary {vocabulary}, {rows} rows: {'equal' if same else 'MISMATCH'}; "
                  f"kernel {kernel_us:.1f} us, torch log_softmax + max {torch_us:.1f} us")
    return ok


if __name__ == "__main__":
    print("OK" if check() else "MISMATCH")
