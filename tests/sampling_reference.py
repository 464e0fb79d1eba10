"""An independent reference for sampling: the distribution a sampler must draw from, written
straight from the definitions in plain numpy (float64), and a chi-square goodness-of-fit test.

Nothing here imports the engine: a bug in ``lmql_core.engine`` cannot also move the expected
values. The definitions follow transformers' warpers (LMQL 0.7.3's server hands its options to
them): logit bias added to the logits, then temperature, then top-k, then top-p over what
top-k left (renormalized), keeping the smallest set of most likely tokens whose probability
reaches top_p.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# The significance of every statistical test in the suite. Samplers are seeded, so a run is
# deterministic; ALPHA is the chance that a correct sampler fails for an arbitrary seed.
ALPHA = 1e-4
MIN_EXPECTED = 5.0  # categories expected fewer times than this are pooled (chi-square's rule)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.asarray(x, dtype=np.float64) - np.max(x)
    e = np.exp(shifted)
    return e / e.sum()


def distribution(logits: Sequence[float] | np.ndarray, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, bias: Mapping[int, float] | None = None) -> np.ndarray:
    """The probability of each token under these settings. A bias of -100 or less bans a token,
    +100 or more restricts the choice to the tokens so biased (LMQL's masks); others add."""
    x = np.array(logits, dtype=np.float64)
    bias = dict(bias or {})
    forced = [token for token, value in bias.items() if value >= 100]
    if forced:
        x = np.where(np.isin(np.arange(len(x)), forced), x, -np.inf)
    for token, value in bias.items():
        if value <= -100:
            x[token] = -np.inf
        elif value < 100:
            x[token] += value
    probs = softmax(x / temperature)
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros(len(probs), dtype=bool)
    keep[order[: top_k or len(probs)]] = True
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum()
    held = 0.0
    for token in order:
        if not keep[token]:
            break
        if held >= top_p:
            keep[token] = False
        held += probs[token]
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df): 1 - the regularized lower incomplete gamma
    function, from its power series."""
    a, z = df / 2.0, statistic / 2.0
    if z <= 0:
        return 1.0
    if z > 600:  # far out in the tail for the small df used here (and exp would overflow)
        return 0.0
    term = total = 1.0 / a
    n = 1
    while term > total * 1e-16:
        term *= z / (a + n)
        total += term
        n += 1
    return max(0.0, 1.0 - math.exp(a * math.log(z) - z - math.lgamma(a)) * total)


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int, float]:
    """Pearson's statistic of observed ``counts`` against ``probs`` (rare categories pooled),
    its degrees of freedom and its p-value."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = probs * counts.sum()
    common = expected >= MIN_EXPECTED
    observed_bins = [*counts[common], counts[~common].sum()]
    expected_bins = [*expected[common], expected[~common].sum()]
    if expected_bins[-1] < MIN_EXPECTED:  # the pool itself is rare: merge it into the smallest bin
        smallest = int(np.argmin(expected_bins[:-1]))
        observed_bins[smallest] += observed_bins.pop()
        expected_bins[smallest] += expected_bins.pop()
    o, e = np.asarray(observed_bins), np.asarray(expected_bins)
    statistic = float(((o - e) ** 2 / e).sum())
    df = len(o) - 1
    return statistic, df, chi2_sf(statistic, df)


def assert_drawn_from(tokens: Sequence[int] | np.ndarray, probs: np.ndarray, alpha: float = ALPHA) -> None:
    """The tokens look like independent draws from ``probs``: none of probability 0, and the
    frequencies pass a chi-square test at significance ``alpha``."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=len(probs))
    impossible = np.flatnonzero((probs == 0) & (counts > 0))
    assert not len(impossible), f"drew tokens of probability 0: {impossible.tolist()}"
    statistic, df, p = chi_square(counts, probs)
    frequencies = np.round(counts / counts.sum(), 4)
    assert df >= 1, "the reference puts (nearly) all mass on one token: nothing to test"
    assert p >= alpha, (f"chi-square {statistic:.1f} with {df} df (p={p:.2e} < {alpha}):\n"
                        f"drawn    {frequencies.tolist()}\nexpected {np.round(probs, 4).tolist()}")
