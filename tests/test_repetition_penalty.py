"""The repetition penalty of both array implementations (``NumpyOps``, ``TorchOps``) against
transformers' ``RepetitionPenaltyLogitsProcessor``: a seen token's logit is divided by the
penalty where positive and multiplied by it where negative (issue 28, point 7: a penalty applied
inverted to negative logits went unnoticed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmql_core.base.array_ops import NumpyOps
from lmql_core.engine.sampling import SamplingPlan, collect_sampling, launch_sampling
from lmql_core.engine.sequence import SamplingParams

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmql_core.base.array_ops import TorchOps  # noqa: E402

# row 0: seen tokens on both sides of zero and at zero; greedy picks token 1 only where the
# penalty makes seen token 0 (-0.8) worse than unseen token 1 (-1.0), i.e. not when inverted
LOGITS = np.array([[-0.8, -1.0, 2.5, -3.0, 0.0, 1.2, -0.1, 0.7],
                   [1.5, -2.0, 0.3, -0.4, 2.2, -1.1, 0.0, 0.9]], dtype=np.float32)
HISTORIES = [[0, 2, 3, 4, 0, 3, 7], [1, 4, 5, 5]]
OPS = {"numpy": (NumpyOps, lambda a: np.array(a, dtype=np.float32)),
       "torch": (TorchOps, lambda a: torch.tensor(np.array(a), dtype=torch.float32))}


def reference(logits: np.ndarray, row: int, history: list[int], penalty: float) -> np.ndarray:
    """transformers' rule on one row (the others unchanged)."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    scores = torch.tensor(logits[row : row + 1])
    processed = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([history]), scores)
    expected = logits.copy()
    expected[row] = processed[0].numpy()
    return expected


def as_numpy(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


@pytest.mark.parametrize("ops_name", OPS)
@pytest.mark.parametrize("penalty", [1.5, 0.6])
@pytest.mark.parametrize("row", [0, 1])
def test_penalize_follows_transformers_on_both_signs(ops_name: str, penalty: float, row: int) -> None:
    ops_class, array = OPS[ops_name]
    before = array(LOGITS)
    penalized = as_numpy(ops_class().penalize(before, row, HISTORIES[row], penalty))
    np.testing.assert_allclose(penalized, reference(LOGITS, row, HISTORIES[row], penalty), rtol=1e-6)
    np.testing.assert_array_equal(as_numpy(before), LOGITS)  # a new array: the step's logits are kept
    seen_negative = [t for t in HISTORIES[row] if LOGITS[row, t] < 0]
    assert seen_negative, "the case must reach a negative seen logit"


@pytest.mark.parametrize("ops_name", OPS)
def test_the_sampler_penalizes_each_row_by_its_own_history(ops_name: str) -> None:
    """Through the engine's sampling step: greedy choices and reported log-probabilities are
    those of transformers' penalized logits, each row with its own penalty and history."""
    ops_class, array = OPS[ops_name]
    penalties = [1.5, 1.3]
    params = [SamplingParams(max_tokens=1, repetition_penalty=p, top_logprobs=3) for p in penalties]
    ops = ops_class()
    samples = collect_sampling(ops, launch_sampling(ops, array(LOGITS), SamplingPlan(params), seed=0,
                                                    histories=HISTORIES))
    for row, penalty in enumerate(penalties):
        expected = reference(LOGITS, row, HISTORIES[row], penalty)[row]
        logprobs = torch.log_softmax(torch.tensor(expected, dtype=torch.float64), -1).numpy()
        assert samples.tokens[row] == int(np.argmax(expected))
        assert samples.logprobs[row] == pytest.approx(logprobs.max(), abs=1e-5)
        for token, logprob in samples.top_logprobs[row].items():
            assert logprob == pytest.approx(logprobs[token], abs=1e-5)
    assert samples.tokens[0] == 2  # the largest logit wins row 0 either way; the next test pins the sign


@pytest.mark.parametrize("ops_name", OPS)
def test_a_seen_negative_logit_loses_to_an_unseen_smaller_one(ops_name: str) -> None:
    ops_class, array = OPS[ops_name]
    logits = array([[-0.8, -1.0, -3.0]])
    params = [SamplingParams(max_tokens=1, repetition_penalty=1.5)]
    ops = ops_class()
    samples = collect_sampling(ops, launch_sampling(ops, logits, SamplingPlan(params), seed=0,
                                                    histories=[[0]]))
    expected = reference(np.array([[-0.8, -1.0, -3.0]], dtype=np.float32), 0, [0], 1.5)[0]
    assert int(np.argmax(expected)) == 1  # transformers: -0.8 * 1.5 = -1.2 < -1.0
    assert samples.tokens == [1]
