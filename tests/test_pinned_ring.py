"""Small host tensors on their way to a GPU through one reused pinned buffer
(``lmql_core.base.pinned_ring``, used by ``TorchOps.to_device``): with the device kept busy, the
copies run long after the host queued them, so a segment written again too early would hand an
earlier copy a later tensor. Every tensor must arrive as it was, across many laps of the ring, of
every size and dtype, from two streams, and from two threads; one larger than a segment goes the
allocator's way."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmql_core.base import pinned_ring  # noqa: E402
from lmql_core.base.array_ops import TorchOps  # noqa: E402

DEVICE = torch.device("cuda")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def keep_busy() -> None:
    torch.cuda._sleep(2_000_000)  # a spinning kernel: the copies queued behind it wait


def sent(ops: TorchOps, rng: np.random.Generator, laps: int, stream: torch.cuda.Stream | None = None,
         ) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Tensors of random sizes and dtypes through ``ops``, enough to go round the ring ``laps`` times."""
    made, total = [], 0
    with torch.cuda.stream(stream or torch.cuda.current_stream()):
        while total < laps * pinned_ring.SEGMENTS * pinned_ring.SEGMENT_BYTES:
            dtype = [np.int64, np.int32, np.float32][int(rng.integers(3))]
            values = rng.integers(-1000, 1000, size=int(rng.integers(1, 20_000))).astype(dtype)
            if rng.random() < 0.3:
                keep_busy()
            made.append((values, ops.to_device(torch.from_numpy(values), DEVICE)))
            total += values.nbytes
    return made


def arrived(made: list[tuple[np.ndarray, torch.Tensor]]) -> bool:
    torch.cuda.synchronize()
    return all(np.array_equal(values, on_device.cpu().numpy()) for values, on_device in made)


def test_every_tensor_arrives_as_it_was_across_laps_of_the_ring() -> None:
    ops = TorchOps()
    made = sent(ops, np.random.default_rng(1), laps=3)
    assert arrived(made)
    assert ops.rings.get().buffer.is_pinned()


def test_copies_from_two_streams_and_two_threads() -> None:
    ops = TorchOps()
    side = torch.cuda.Stream()
    made = sent(ops, np.random.default_rng(2), laps=1) + sent(ops, np.random.default_rng(3), laps=1, stream=side)
    other: list[tuple[np.ndarray, torch.Tensor]] = []
    thread = threading.Thread(target=lambda: other.extend(sent(ops, np.random.default_rng(4), laps=2)))
    thread.start()
    made += sent(ops, np.random.default_rng(5), laps=2)
    thread.join()
    assert arrived(made + other)


def test_a_tensor_larger_than_a_segment_is_copied_too() -> None:
    values = np.arange(pinned_ring.SEGMENT_BYTES // 4 + 10, dtype=np.int64)
    assert arrived([(values, TorchOps().to_device(torch.from_numpy(values), DEVICE))])
