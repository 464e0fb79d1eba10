"""NumpyOps and TorchOps (CPU) give the same results on the same logits, each checked against a
float64 numpy reference written in the tests (``tests/sampling_reference.py``, which imports
nothing of the engine): greedy choices with every kind of logit bias, the top log-prob lists,
the tokens top-k and top-p keep, sampling where one token is left, and scored log-probs.
Fast: no server, no model. (Drawn frequencies are checked in ``test_sampling_ops.py``.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmql_core.engine.sampling import SCORE_ROWS, collect_scoring, launch_scoring, sample_batch
from lmql_core.engine.sequence import SamplingParams
from tests.sampling_reference import distribution
from tests.test_sampling_ops import OPS

ROWS = (np.random.default_rng(20).standard_normal((6, 257)) * 3).astype(np.float32)
TOP = 5

TOLERANCE = 1e-5  # float32 rounding alone (forced tokens too: their logits are left as they are)

BIASES: dict[str, dict[int, float]] = {
    "none": {},
    "moderate": {3: 2.5, 7: -1.0, int(np.argmax(ROWS[0])): -4.0},
    "ban_the_best": {int(np.argmax(row)): -100 for row in ROWS},
    "force_a_subset": {5: 100, 9: 100, 200: 100},
}


def reference_logprobs(row: np.ndarray, bias: dict[int, float] | None = None) -> np.ndarray:
    """log p of every token under ``bias`` at temperature 1 (-inf where p is 0)."""
    with np.errstate(divide="ignore"):
        return np.log(distribution(row, bias=bias))


def host(ops: Any, array: Any) -> np.ndarray:
    return np.asarray(ops.finish_host_copy(ops.start_host_copy(array))[0], dtype=np.float64)


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("bias_name", BIASES)
def test_greedy_choices_logprobs_and_top_lists_match_the_reference(ops_name: str, bias_name: str) -> None:
    ops, array = OPS[ops_name]()
    bias = BIASES[bias_name]
    params = [SamplingParams(max_tokens=1, logit_bias=dict(bias), top_logprobs=TOP) for _ in ROWS]
    samples = sample_batch(ops, array(ROWS), params, seed=0)
    for row, token, logprob, top in zip(ROWS, samples.tokens, samples.logprobs, samples.top_logprobs,
                                        strict=True):
        reference = reference_logprobs(row, bias)
        ranked = [int(t) for t in np.argsort(-reference, kind="stable")[:TOP] if np.isfinite(reference[t])]
        assert token == ranked[0]
        assert logprob == pytest.approx(reference[token], abs=TOLERANCE)
        assert list(top)[: len(ranked)] == ranked  # beyond: tokens a forcing bias left at ~0
        assert [top[t] for t in ranked] == pytest.approx(reference[ranked].tolist(), abs=TOLERANCE)
        assert all(value < -1e3 for t, value in top.items() if t not in ranked)


# Two logits 7e-4 apart (the pair GPT-2-vocabulary micro model put last under ``len(X) < 96``,
# issue 31), the larger at the higher id, among tokens forced small (+100 on 300 tokens) and large
# (+100 on more than the sparse limit): LMQL adds +100 in float64, so it takes the larger.
NEAR_TIE = np.full(1000, -2.0, dtype=np.float32)
NEAR_TIE[[19, 47]] = [0.20954075455665588, 0.210237056016922]


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("forced", [[19, 47], [19, 47, *range(100, 400)]])
def test_forced_tokens_keep_their_logits_so_a_near_tie_goes_to_the_larger(ops_name: str, forced: list[int]) -> None:
    ops, array = OPS[ops_name]()
    bias = dict.fromkeys(forced, 100.0)
    reference = reference_logprobs(NEAR_TIE, bias)
    params = [SamplingParams(max_tokens=1, logit_bias=dict(bias), top_logprobs=2)]
    samples = sample_batch(ops, array(NEAR_TIE[None]), params, seed=0)
    assert samples.tokens == [int(np.argmax(reference))] == [47]
    assert list(samples.top_logprobs[0].values()) == pytest.approx(reference[[47, 19]].tolist(), abs=TOLERANCE)


FILTERS = [(1.0, 0, 0.75), (1.5, 6, 0.7), (0.7, 3, 1.0), (1.0, 1, 1.0), (2.0, 0, 0.3), (0.5, 40, 0.9)]


@pytest.mark.parametrize("ops_name", OPS)
def test_top_k_and_top_p_keep_the_tokens_the_reference_keeps(ops_name: str) -> None:
    """Per row (temperature, top_k, top_p): the tokens left to sample from."""
    ops, array = OPS[ops_name]()
    logprobs = ops.log_softmax(ops.prepare(array(ROWS)))
    scores = ops.scale_rows(logprobs, ops.floats([1.0 / t for t, _, _ in FILTERS], logprobs))
    kept = host(ops, ops.keep_top(scores, [k for _, k, _ in FILTERS], [p for _, _, p in FILTERS]))
    for row, kept_row, (temperature, top_k, top_p) in zip(ROWS, kept, FILTERS, strict=True):
        expected = np.flatnonzero(distribution(row, temperature, top_k, top_p) > 0)
        assert np.flatnonzero(np.isfinite(kept_row)).tolist() == expected.tolist()


@pytest.mark.parametrize("ops_name", OPS)
def test_sampling_where_the_filters_leave_one_token_picks_it(ops_name: str) -> None:
    ops, array = OPS[ops_name]()
    bias = BIASES["moderate"]
    params = [SamplingParams(max_tokens=1, temperature=1.7, logit_bias=dict(bias), top_k=1),
              SamplingParams(max_tokens=1, temperature=0.9, logit_bias=dict(bias), top_p=1e-6)] * 3
    samples = sample_batch(ops, array(ROWS), params, seed=7)
    expected = [int(np.argmax(reference_logprobs(row, bias))) for row in ROWS]
    assert samples.tokens == expected


@pytest.mark.parametrize("ops_name", OPS)
def test_scored_logprobs_match_the_reference(ops_name: str) -> None:
    ops, array = OPS[ops_name]()
    targets = [0, 17, 256, int(np.argmax(ROWS[3])), int(np.argmin(ROWS[4])), 128]
    scores = collect_scoring(ops, launch_scoring(ops, [array(ROWS)], [targets]))
    expected = [reference_logprobs(row)[t] for row, t in zip(ROWS, targets, strict=True)]
    assert len(scores) == 1 and scores[0] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("ops_name", OPS)
def test_requests_scored_together_get_their_own_logprobs(ops_name: str) -> None:
    """A step's SCORE requests are scored in one pass: each gets the log-probs of its own rows."""
    ops, array = OPS[ops_name]()
    spans, targets = [(0, 1), (1, 4), (4, 6)], [[5], [0, 256, 9], [int(np.argmax(ROWS[4])), 128]]
    scores = collect_scoring(ops, launch_scoring(ops, [array(ROWS[a:b]) for a, b in spans], targets))
    expected = [[reference_logprobs(ROWS[a + i])[t] for i, t in enumerate(ts)]
                for (a, _), ts in zip(spans, targets, strict=True)]
    assert [len(s) for s in scores] == [1, 3, 2]
    for got, want in zip(scores, expected, strict=True):
        assert got == pytest.approx(want, abs=TOLERANCE)


@pytest.mark.parametrize("ops_name", OPS)
def test_more_scored_rows_than_one_log_softmax_takes_score_alike(ops_name: str) -> None:
    ops, array = OPS[ops_name]()
    many = np.tile(ROWS, (SCORE_ROWS // len(ROWS) + 2, 1))  # past SCORE_ROWS: two parts
    targets = [[(7 * i) % many.shape[1] for i in range(len(many) - 10)], list(range(10))]
    scores = collect_scoring(ops, launch_scoring(ops, [array(many[:-10]), array(many[-10:])], targets))
    flat = [t for ts in targets for t in ts]
    expected = [reference_logprobs(row)[t] for row, t in zip(many, flat, strict=True)]
    assert len(flat) > SCORE_ROWS and scores[0] + scores[1] == pytest.approx(expected, abs=TOLERANCE)
