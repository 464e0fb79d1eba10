"""Constraint masks through reused host buffers (``lmql_core.base.mask_staging``, used by
``TorchOps.mask_rows``): many constrained steps in a row, with masks that change in content and
shape, each against bits read one by one in Python; on a GPU with the device kept busy, so the
copies from pinned buffers run long after the host queued them (a buffer refilled too early
would hand an earlier copy a later mask). Then the HF engine on several grammars at once, against
transformers' greedy decode under an independent mask (``reference_greedy``)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")
pytest.importorskip("llguidance")

from lmql_core.base.array_ops import TorchOps  # noqa: E402
from lmql_core.engine.constraints import GrammarCompiler, GrammarSpec  # noqa: E402
from lmql_core.engine.engine import Engine  # noqa: E402
from lmql_core.engine.sequence import SamplingParams  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests import test_constraints_engine  # noqa: E402
from tests.test_constraints_engine import DATE, PROMPT, reference_greedy, run, text_of  # noqa: E402

tokenizer = test_constraints_engine.tokenizer  # its fixture: lmql-tiny's tokenizer

pytestmark = pytest.mark.hf
GPU = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not GPU, reason="needs a CUDA GPU"))]


def masked_by_hand(logits: np.ndarray, rows: list[int], bits: np.ndarray) -> np.ndarray:
    """``logits`` with token t of row ``rows[j]`` at -inf unless bit t of ``bits[j]`` is set (32
    tokens a word, the lowest bit first); tokens past the mask's width are banned."""
    expected = logits.copy()
    width = 32 * bits.shape[1]
    for j, row in enumerate(rows):
        for token in range(logits.shape[1]):
            if token >= width or not (int(bits[j, token // 32]) >> (token % 32)) & 1:
                expected[row, token] = -np.inf
    return expected


def steps(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, list[int], np.ndarray]]:
    """(logits, masked rows, bits) of ``count`` steps: batches of 2 to 7 rows, 1 to 6 of them
    masked, vocabularies of 40 to 300 tokens, masks narrower or wider than the vocabulary."""
    made = []
    for _ in range(count):
        batch, vocab = int(rng.integers(2, 8)), int(rng.integers(40, 300))
        rows = sorted(rng.choice(batch, size=int(rng.integers(1, batch)), replace=False).tolist())
        words = int(rng.integers(1, vocab // 32 + 3))
        bits = rng.integers(-2**31, 2**31 - 1, size=(len(rows), words), dtype=np.int64).astype(np.int32)
        made.append((rng.normal(size=(batch, vocab)).astype(np.float32), rows, bits))
    return made


def keep_busy(device: str) -> None:
    """Work queued ahead of the next copy, so it runs well after the host moved on."""
    if device == "cuda":
        torch.cuda._sleep(5_000_000)  # some milliseconds of a spinning kernel


@pytest.mark.parametrize("device", DEVICES)
def test_many_masks_in_a_row_each_ban_exactly_their_unset_bits(device: str) -> None:
    """On a GPU through the staging buffers; on the CPU unpacked by numpy, with no buffer."""
    ops = TorchOps()
    made = steps(np.random.default_rng(7), 60)
    made += [(logits, list(range(len(logits))), bits[:1].repeat(len(logits), 0))  # every row masked
             for logits, _, bits in made[:5]]
    results = []
    for logits, rows, bits in made:
        x = torch.from_numpy(logits).to(device)  # before the busy work: this copy waits for the device
        keep_busy(device)
        results.append(ops.mask_rows(x, rows, bits))
    for result, (logits, rows, bits) in zip(results, made, strict=True):
        assert np.array_equal(result.cpu().numpy(), masked_by_hand(logits, rows, bits))
    assert all(buffer is None for buffer in ops.mask_staging.buffers) == (device == "cpu")


@pytest.mark.parametrize("device", DEVICES[1:])
def test_the_buffers_are_reused_once_grown(device: str) -> None:
    ops = TorchOps()
    made = steps(np.random.default_rng(3), 20)
    for logits, rows, bits in made:
        ops.mask_rows(torch.from_numpy(logits).to(device), rows, bits)
    grown = [buffer.data_ptr() for buffer in ops.mask_staging.buffers]
    rng = np.random.default_rng(4)
    for logits, rows, old_bits in made:  # the same shapes in the same turns, other masks
        bits = rng.integers(-2**31, 2**31 - 1, size=old_bits.shape, dtype=np.int64).astype(np.int32)
        x = torch.from_numpy(logits).to(device)
        keep_busy(device)
        result = ops.mask_rows(x, rows, bits)
        assert np.array_equal(result.cpu().numpy(), masked_by_hand(logits, rows, bits))
    assert [buffer.data_ptr() for buffer in ops.mask_staging.buffers] == grown
    assert all(buffer.is_pinned() == (device == "cuda") for buffer in ops.mask_staging.buffers)


@pytest.fixture(scope="module", params=DEVICES)
def engine(request: pytest.FixtureRequest) -> Any:
    engine = Engine(HFBackend(str(bundled_path("lmql-tiny")), cuda=request.param == "cuda"))
    yield engine
    engine.stop()


def test_grammars_side_by_side_follow_transformers_step_by_step(engine: Engine, tokenizer: Any) -> None:
    """Three constrained streams in one batch, each ending at its own step (masked rows 3, then 2,
    then 1): every text is transformers' greedy one under its own mask."""
    compiler = GrammarCompiler(tokenizer, engine.backend.vocab_size, engine.backend.eos_token_id)
    patterns = [DATE, "[0-9]{3}-[0-9]{4}", "[A-Z][a-z]{2,5}"]
    prompt = tokenizer.encode(PROMPT)
    streams = run(engine, [(prompt, SamplingParams(max_tokens=40, constraint=compiler.compile(
        GrammarSpec.of("regex", pattern)))) for pattern in patterns])
    texts = [text_of(tokenizer, events) for events in streams]
    assert len({len(events) for events in streams}) > 1, texts  # the masked rows change in number
    for text, pattern in zip(texts, patterns, strict=True):
        assert re.fullmatch(pattern, text)
        assert text == reference_greedy(tokenizer, prompt, pattern)
