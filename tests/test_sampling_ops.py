"""The engine's sampler (``sampling.py`` over ``NumpyOps`` and ``TorchOps``) against an
independent numpy reference: drawn frequencies by a chi-square test at significance ALPHA with
fixed seeds, greedy choices and reported log-probabilities exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmql_core.base.array_ops import NumpyOps
from lmql_core.engine.sampling import sample_batch
from lmql_core.engine.sequence import SamplingParams
from tests.sampling_reference import assert_drawn_from, distribution

DRAWS = 20_000  # rows of one batch: each gets its own noise
ISSUE_ROW = np.log([0.6, 0.2, 0.1, 0.05, 0.05])  # the row a flipped Gumbel sign drew as [.69, .21, .07, ...]
WIDE_ROW = np.random.default_rng(11).standard_normal(40) * 1.5  # 40 tokens, a long tail

CASES: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
    "plain": (ISSUE_ROW, {}),
    "cold": (WIDE_ROW, {"temperature": 0.6}),
    "hot": (WIDE_ROW, {"temperature": 2.5}),
    "top_k": (WIDE_ROW, {"temperature": 1.3, "top_k": 5}),
    "top_p": (WIDE_ROW, {"top_p": 0.75}),
    "top_p_hot": (WIDE_ROW, {"temperature": 1.8, "top_p": 0.5}),
    "top_k_then_top_p": (WIDE_ROW, {"temperature": 1.5, "top_k": 6, "top_p": 0.7}),  # top-p of what top-k left
    "moderate_bias": (ISSUE_ROW, {"bias": {0: -3.0, 3: 2.5}}),
    "bias_and_ban": (WIDE_ROW, {"bias": {int(np.argmax(WIDE_ROW)): -100, 7: 2.5, 8: -1.0}, "temperature": 1.2}),
    "force_subset": (WIDE_ROW, {"bias": {3: 100, 9: 100, 20: 100, 21: -2.0}}),
}


def numpy_ops() -> tuple[Any, Any]:
    return NumpyOps(), lambda rows: np.asarray(rows, dtype=np.float32)


def torch_ops() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    from lmql_core.base.array_ops import TorchOps

    return TorchOps(), lambda rows: torch.tensor(np.asarray(rows), dtype=torch.float32)


OPS = {"numpy": numpy_ops, "torch": torch_ops}


def params(settings: dict[str, Any], **extra: Any) -> SamplingParams:
    return SamplingParams(max_tokens=1, temperature=settings.get("temperature", 1.0),
                          logit_bias=dict(settings.get("bias", {})), top_k=settings.get("top_k", 0),
                          top_p=settings.get("top_p", 1.0), **extra)


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("case", CASES)
def test_sampled_frequencies_follow_the_reference(ops_name: str, case: str) -> None:
    ops, array = OPS[ops_name]()
    row, settings = CASES[case]
    expected = distribution(row, settings.get("temperature", 1.0), settings.get("top_k", 0),
                            settings.get("top_p", 1.0), settings.get("bias"))
    samples = sample_batch(ops, array([row] * DRAWS), [params(settings)] * DRAWS, seed=1234)
    assert_drawn_from(samples.tokens, expected)


@pytest.mark.parametrize("ops_name", OPS)
def test_reported_logprobs_are_the_biased_distribution_at_temperature_one(ops_name: str) -> None:
    """Whatever the temperature and filters, ``logprob`` and ``top_logprobs`` describe the
    biased distribution at temperature 1 (the README's rule)."""
    ops, array = OPS[ops_name]()
    settings = {"temperature": 1.7, "top_k": 4, "bias": {2: 2.5, 5: -3.0, 6: -100}}
    samples = sample_batch(ops, array([WIDE_ROW] * 64), [params(settings, top_logprobs=5)] * 64, seed=5)
    with np.errstate(divide="ignore"):  # the banned token: log 0
        reference = np.log(distribution(WIDE_ROW, bias=settings["bias"]))
    best = np.argsort(-reference, kind="stable")[:5]
    for token, logprob, top in zip(samples.tokens, samples.logprobs, samples.top_logprobs, strict=True):
        assert logprob == pytest.approx(reference[token], abs=1e-5)
        assert sorted(top) == sorted(best.tolist())
        assert [top[t] for t in best] == pytest.approx(reference[best].tolist(), abs=1e-5)


def mixed_batch() -> tuple[np.ndarray, list[SamplingParams]]:
    """Greedy rows with every kind of bias, and filters that greedy rows must ignore."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 50)).astype(np.float32) * 2
    settings: list[dict[str, Any]] = [
        {}, {"bias": {int(np.argmax(logits[1])): -100}}, {"bias": {4: 100, 9: 100}},
        {"bias": {0: 2.5, 1: -3.0}}, {"top_k": 1, "top_p": 0.1}, {"bias": {5: 1e9, 6: -1e9}},
    ]
    return logits, [params(s, top_logprobs=4) for s in settings]


def test_numpy_and_torch_agree_on_greedy_choices_and_logprobs() -> None:
    logits, batch = mixed_batch()
    for p in batch:
        p.temperature = 0.0
    ops_np, array_np = numpy_ops()
    ops_torch, array_torch = torch_ops()
    ours = sample_batch(ops_np, array_np(logits), batch, seed=0)
    for p in batch:
        p.dense_bias = None  # built per kind of array
    theirs = sample_batch(ops_torch, array_torch(logits), batch, seed=0)
    assert ours.tokens == theirs.tokens
    assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-5)
    for a, b in zip(ours.top_logprobs, theirs.top_logprobs, strict=True):
        assert list(a) == list(b) and list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)
    for row, p, token, logprob in zip(logits, batch, ours.tokens, ours.logprobs, strict=True):
        reference = distribution(row, bias=p.logit_bias)
        assert token == int(np.argmax(reference))
        assert logprob == pytest.approx(np.log(reference[token]), abs=1e-5)


def test_greedy_rows_stay_greedy_beside_sampled_rows() -> None:
    for make in OPS.values():
        ops, array = make()
        batch = [params({"temperature": 0.0}), params({"temperature": 3.0})] * 200
        samples = sample_batch(ops, array([WIDE_ROW] * len(batch)), batch, seed=9)
        assert set(samples.tokens[0::2]) == {int(np.argmax(WIDE_ROW))}
        assert len(set(samples.tokens[1::2])) > 10


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 0.75), (1.5, 6, 0.7), (0.7, 3, 1.0)])
def test_the_reference_filters_as_transformers_warpers_do(temperature: float, top_k: int, top_p: float) -> None:
    """The reference itself, checked once against transformers' warpers (LMQL 0.7.3's server)."""
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    warpers = [logits_process.TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(logits_process.TopKLogitsWarper(top_k))
    warpers.append(logits_process.TopPLogitsWarper(top_p))
    scores = torch.tensor(WIDE_ROW[None], dtype=torch.float64)
    for warper in warpers:
        scores = warper(None, scores)
    expected = torch.softmax(scores, dim=-1)[0].numpy()
    assert distribution(WIDE_ROW, temperature, top_k, top_p) == pytest.approx(expected, abs=1e-12)


TIED_ROWS = {
    "uniform": np.zeros(4096),
    "tied_below_the_best": np.asarray([0.0, 1.0, 3.0, 3.0, 2.0, 3.0] * 700),
}


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("row_name", TIED_ROWS)
@pytest.mark.parametrize("top_logprobs", [1, 5])
def test_greedy_ties_go_to_the_lowest_id(ops_name: str, row_name: str, top_logprobs: int) -> None:
    """Among equal logits the greedy choice and the top list rank the lowest id first, as
    numpy's stable sort (the reference) and argmax do."""
    ops, array = OPS[ops_name]()
    row = TIED_ROWS[row_name]
    batch = [params({"temperature": 0.0}, top_logprobs=top_logprobs)] * 3
    samples = sample_batch(ops, array([row] * 3), batch, seed=0)
    best = np.argsort(-row, kind="stable")[:top_logprobs].tolist()
    assert samples.tokens == [best[0]] * 3
    if top_logprobs > 1:
        assert [list(top) for top in samples.top_logprobs] == [best] * 3


@pytest.mark.parametrize("ops_name", OPS)
def test_a_long_bias_added_as_dense_rows_chooses_as_a_short_one_added_entry_by_entry(ops_name: str) -> None:
    """Biases of up to SPARSE_BIAS_TOKENS tokens are added entry by entry, longer ones as dense
    rows: the same bias padded with zeros past that length takes the dense path and must give
    the same tokens and exactly the same log-probs, greedy and sampled."""
    from lmql_core.engine.sampling import SPARSE_BIAS_TOKENS

    ops, array = OPS[ops_name]()
    rng = np.random.default_rng(21)
    vocab = 2 * SPARSE_BIAS_TOKENS + 8
    logits = rng.standard_normal((6, vocab)).astype(np.float32) * 3
    short = {int(np.argmax(logits[0])): -100, 3: 2.5, 7: 100, 8: 100, 9: -1.5}
    padded = {**{t: 0.0 for t in range(10, 11 + SPARSE_BIAS_TOKENS)}, **short}
    results = []
    for bias in (short, padded):
        batch = [params({"bias": bias, "temperature": t}, top_logprobs=3) for t in (0.0, 0.0, 0.9, 0.0, 1.3, 0.0)]
        batch[1].logit_bias = {}  # a row without a bias between biased ones
        results.append(sample_batch(ops, array(logits), batch, seed=9))
    sparse, dense = results
    assert sparse.tokens == dense.tokens and sparse.logprobs == dense.logprobs
    assert sparse.top_logprobs == dense.top_logprobs


@pytest.mark.parametrize("picked", [None, [2, 0]])  # every sampled token in order, or some of them
def test_place_puts_device_tokens_beside_host_ones(picked: list[int] | None) -> None:
    """``place`` (a chained step's input: forced tokens from the host, sampled ones where they
    are) on numpy and torch, against the list written by hand."""
    torch = pytest.importorskip("torch")
    from lmql_core.base.array_ops import TorchOps

    host, rows = [11, 0, 13, 0], [1, 3]
    sampled = [7, 8, 9] if picked else [7, 8]
    expected = [11, 9, 13, 7] if picked else [11, 7, 13, 8]
    mine = NumpyOps().place(host, rows, np.array(sampled), picked)
    assert mine.tolist() == expected and mine.dtype == np.int64
    theirs = TorchOps().place(host, rows, torch.tensor(sampled), picked)
    assert theirs.tolist() == expected and theirs.dtype == torch.int64
