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


@pytest.mark.parametrize(("values", "dtype"), [
    ([3, -1, 7], None), ([0.5, -2.25], None), ([True, False, True], None), ([[1, 2], [3, 4]], None),
    ([1, 2, 300], torch.long), ([5, 6], torch.int32), ([1, 2], torch.float32), ([1, 2, 128], torch.uint8),
    ([], torch.long), ([], None), (np.array([1, 2], dtype=np.int32), None), (np.array([0.5, 1.5]), None),
    ([1, 2.5], None),
])
def test_host_lists_arrive_as_torch_tensor_makes_them(values: list, dtype: torch.dtype | None) -> None:
    """``TorchOps.tensor`` writes a list into the ring with numpy: the same dtype, shape and values
    as ``torch.tensor`` gives, on the device."""
    keep_busy()
    on_device = TorchOps().tensor(values, DEVICE, dtype)
    expected = torch.tensor(values, dtype=dtype)
    assert on_device.device.type == "cuda" and on_device.dtype == expected.dtype
    assert on_device.shape == expected.shape and torch.equal(on_device.cpu(), expected)


def test_host_lists_arrive_as_they_were_across_laps_of_the_ring() -> None:
    ops, rng, made, total = TorchOps(), np.random.default_rng(6), [], 0
    while total < 2 * pinned_ring.SEGMENTS * pinned_ring.SEGMENT_BYTES:
        values = rng.integers(-1000, 1000, size=int(rng.integers(1, 5_000)))
        if rng.random() < 0.3:
            keep_busy()
        made.append((values, ops.tensor(values.tolist(), DEVICE, torch.long)))
        total += values.nbytes
    assert arrived(made)


def test_results_come_back_through_reused_buffers() -> None:
    """Results copied to the host while the device is busy: each step's values as they were on
    the device, the pinned buffers used again once read, and a copy finished twice refused."""
    ops = TorchOps()
    seen_buffers, pendings = set(), []
    for step in range(40):
        tokens = torch.arange(64, device=DEVICE) * (step + 1)
        logprobs = -torch.rand(64, 1, device=DEVICE)
        keep_busy()
        pending = ops.start_host_copy(tokens, logprobs)
        seen_buffers.update(host.data_ptr() for host in pending.hosts)
        tokens.add_(1)  # the copy was queued before: it reads the values as they were
        pendings.append((pending, (tokens - 1).tolist(), logprobs.tolist()))
        if len(pendings) > 2:  # two steps in flight, as chained steps keep them
            pending, want_tokens, want_logprobs = pendings.pop(0)
            assert ops.finish_host_copy(pending) == [want_tokens, want_logprobs]
            with pytest.raises(RuntimeError, match="finished twice"):
                ops.finish_host_copy(pending)
    assert len(seen_buffers) <= 2 * 4  # two arrays, at most three steps' buffers at a time, then reused


def test_results_of_every_shape_keep_a_bounded_amount_of_pinned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCORE requests of every length: each shape's buffers could be kept; the bytes kept stay
    under ``KEEP_BYTES``, and every step's values still come back as they were."""
    monkeypatch.setattr(pinned_ring, "KEEP_BYTES", 64 << 10)
    ops = TorchOps()
    for length in range(1, 4000, 37):  # ~850 KiB of results in all
        scores = torch.arange(length, device=DEVICE, dtype=torch.float32) / 3
        assert ops.finish_host_copy(ops.start_host_copy(scores)) == [scores.tolist()]
        assert ops.host_copies.kept_bytes <= 64 << 10
    assert ops.host_copies.kept_bytes > 32 << 10  # (it does keep some)
