"""Token selection for a batch, defined once for every backend.

Per row: apply the stream's repetition penalty (as transformers does), add its logit bias (-100
or less bans a token, +100 or more restricts the choice to the tokens so biased, whose logits
stay as they are), take log-softmax, then pick the argmax (temperature 0) or sample at the
stream's temperature (Gumbel-max) among its top-k / top-p tokens. The reported log-probs are
those of the biased distribution at temperature 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lmql_core.base.array_ops import ArrayOps
from lmql_core.engine.mask_filler import BatchMask
from lmql_core.engine.sequence import SamplingParams

BAN_AT = -100.0
FORCE_AT = 100.0
ONLY_THE_CHOSEN: Mapping[int, float] = MappingProxyType({})  # top log-probs beside the chosen token's
# Temperatures below this decode greedily. Scores are log-probs / T in float32: below 3e-39, 1/T
# itself overflows (and inf * 0 gives NaN rows); and already at 1e-5 a token other than the best
# wins only if its log-prob is within ~1e-4 of the best, finer than float32 logits resolve.
GREEDY_BELOW = 1e-5
SCORE_ROWS = 1024  # scored rows per log-softmax (float32 work of 1024 x vocabulary at most)
# A bias of at most this many tokens a row is added entry by entry: LMQL bans EOS with one, and
# stacking dense rows cost 3.6 ms of a 25 ms step (32 rows, 50k vocabulary, one CPU core);
# longer ones (LMQL's masks hold half the vocabulary), and those that force tokens (which reach
# every token of the row), as dense rows built once per stream.
SPARSE_BIAS_TOKENS = 256


def is_sampled(params: SamplingParams) -> bool:
    """Whether a stream samples (rather than decoding greedily)."""
    return params.temperature >= GREEDY_BELOW


@dataclass
class Samples:
    """One step's choices, a column per field (row i: the batch's row i)."""

    tokens: list[int]
    logprobs: list[float]
    top_logprobs: list[Mapping[int, float]]


def effective_bias(value: float) -> float:
    """What a bias below FORCE_AT adds (a row that forces tokens: ``dense_bias_row``)."""
    return float("-inf") if value <= BAN_AT else value


def forces(bias: Mapping[int, float]) -> bool:
    return any(value >= FORCE_AT for value in bias.values())


def dense_bias_row(ops: ArrayOps, bias: Mapping[int, float], like: Any) -> Any:
    """The row ``bias`` adds: where it forces tokens, 0 on them and -inf on every other token.
    (Not a large bias on the forced tokens: in float32, 1e4 + x keeps ~3 decimals of x, so two
    forced tokens whose logits differ by less than ~1e-3 would tie, and the lower id win, where
    LMQL, adding +100 in float64, and a hard mask both take the larger: issue 31.)"""
    forced = [token for token, value in bias.items() if value >= FORCE_AT]
    if forced:
        return ops.bias_row(dict.fromkeys(forced, 0.0), like, fill=float("-inf"))
    return ops.bias_row({t: effective_bias(b) for t, b in bias.items()}, like)


class SamplingPlan:
    """What a batch's settings ask of sampling, worked out once per batch of rows: a chained
    step (same sequences, same settings) reuses its predecessor's plan, and with it the device
    arrays built from the settings (the stacked bias rows, the temperatures)."""

    def __init__(self, params: list[SamplingParams]) -> None:
        self.params = params
        self.penalized = self.constrained = self.truncated = False
        self.sparse_rows: list[int] = []  # biased rows whose bias is added entry by entry
        self.dense_rows: list[int] = []  # and those added as whole rows
        self.sampled_rows: list[int] = []
        self.seeded_rows: list[int] = []
        self.k = 0
        self._read(params)
        self._device: dict[str, Any] = {}

    def _read(self, params: list[SamplingParams]) -> None:
        """One pass over the rows (a new plan each step where streams join or leave: at 256 rows
        this is 2.5x faster than a comprehension per field)."""
        for row, p in enumerate(params):
            if p.repetition_penalty != 1.0:
                self.penalized = True
            if p.logit_bias:
                sparse = len(p.logit_bias) <= SPARSE_BIAS_TOKENS and not forces(p.logit_bias)
                (self.sparse_rows if sparse else self.dense_rows).append(row)
            if is_sampled(p):
                self.sampled_rows.append(row)
                if p.seed is not None:
                    self.seeded_rows.append(row)
                if p.top_k or p.top_p < 1.0:
                    self.truncated = True
            if p.top_logprobs > self.k:
                self.k = p.top_logprobs
            if p.constraint is not None:
                self.constrained = True

    def device_array(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._device:
            self._device[name] = build()
        return self._device[name]


def apply_bias(ops: ArrayOps, logits: Any, plan: SamplingPlan) -> Any:
    if plan.sparse_rows:  # the same sums as adding dense rows (x + 0 is x), without building them
        entries = plan.device_array("bias entries", lambda: _bias_entries(ops, logits, plan))
        logits = ops.add_entries(logits, entries)
    if plan.dense_rows:
        bias = plan.device_array("bias", lambda: _bias_rows(ops, logits, plan))
        logits = ops.add_rows(logits, plan.dense_rows, bias)
    return logits


def _bias_entries(ops: ArrayOps, logits: Any, plan: SamplingPlan) -> Any:
    rows, tokens, values = [], [], []
    for row in plan.sparse_rows:
        for token, value in plan.params[row].logit_bias.items():
            rows.append(row)
            tokens.append(token)
            values.append(effective_bias(value))
    return ops.entries(rows, tokens, values, logits)


def _bias_rows(ops: ArrayOps, logits: Any, plan: SamplingPlan) -> Any:
    params = [plan.params[i] for i in plan.dense_rows]
    for p in params:  # dense rows are built once per stream: LMQL masks hold half the vocabulary
        if p.dense_bias is None:
            p.dense_bias = dense_bias_row(ops, p.logit_bias, logits)
    return ops.stack([p.dense_bias for p in params])


@dataclass
class PendingSamples:
    """Sampling queued on the device: its results (``tokens`` stays on the device, for a next
    step fed from it), their copy to the host under way, and the plan it followed."""

    tokens: Any
    host_copy: Any
    plan: SamplingPlan
    ranked: bool = False  # greedy everywhere: the host gets only the ranking, best first


def launch_sampling(ops: ArrayOps, logits: Any, plan: SamplingPlan, seed: int,
                    histories: list[list[int]] | None = None,
                    row_seeds: list[int] | None = None, masks: BatchMask | None = None) -> PendingSamples:
    """``histories[i]``: the tokens of row i's sequence so far (for its repetition penalty);
    ``row_seeds[j]``: the noise seed of ``plan.seeded_rows[j]`` (the others share ``seed``);
    ``masks``: the grammar masks of constrained rows (after the bias: a grammar has the last word)."""
    logits = ops.prepare(logits)
    params = plan.params
    if plan.penalized and histories:  # first, as transformers' processors run before LMQL's bias
        for row, p in enumerate(params):
            if p.repetition_penalty != 1.0:
                logits = ops.penalize(logits, row, histories[row], p.repetition_penalty)
    logits = apply_bias(ops, logits, plan)
    if masks is not None:
        logits = ops.mask_rows(logits, masks.rows, masks.bits)
    if not plan.sampled_rows:  # the chosen token heads the top list: fewer operations per step
        best_of = getattr(ops, "best_of", None) if plan.k <= 1 else None  # (optional in ArrayOps)
        values, indices = best_of(logits) if best_of else ops.topk(ops.log_softmax(logits), max(plan.k, 1))
        return PendingSamples(indices[:, 0], ops.start_host_copy(indices, values), plan, ranked=True)
    logprobs = ops.log_softmax(logits)
    scores = ops.scale_rows(logprobs, plan.device_array("scale", lambda: ops.floats(
        [1.0 / p.temperature if is_sampled(p) else 1.0 for p in params], logprobs)))
    if plan.truncated:
        sampled = [is_sampled(p) for p in params]  # greedy rows keep every token
        ks = [p.top_k if s else 0 for p, s in zip(params, sampled, strict=True)]
        ps = [p.top_p if s else 1.0 for p, s in zip(params, sampled, strict=True)]
        scores = ops.keep_top(scores, ks, ps)
    scores = add_noise(ops, scores, plan, seed, row_seeds)
    tokens = ops.argmax(scores)
    arrays = [tokens, ops.take(logprobs, tokens)]
    if plan.k > 0:
        arrays.extend(ops.topk(logprobs, plan.k))
    return PendingSamples(tokens, ops.start_host_copy(*arrays), plan)


def add_noise(ops: ArrayOps, scores: Any, plan: SamplingPlan, seed: int, row_seeds: list[int] | None) -> Any:
    """Gumbel noise on the sampled rows: the step's seed for most, a seeded stream's own for it."""
    if not plan.seeded_rows:
        return ops.add_gumbel(scores, plan.sampled_rows, seed)
    assert row_seeds is not None and len(row_seeds) == len(plan.seeded_rows)
    shared = [i for i in plan.sampled_rows if plan.params[i].seed is None]
    if shared:
        scores = ops.add_gumbel(scores, shared, seed)
    for row, row_seed in zip(plan.seeded_rows, row_seeds, strict=True):
        scores = ops.add_gumbel(scores, [row], row_seed)
    return scores


def stream_seed(seed: int, position: int) -> int:
    """The noise seed of a seeded stream's token at ``position``: the same in any batch, after
    any preemption, so a request with a seed samples the same tokens every time."""
    return (seed * 1_000_003 + position) % (1 << 63)


def collect_sampling(ops: ArrayOps, pending: PendingSamples) -> Samples:
    host = ops.finish_host_copy(pending.host_copy)
    plan = pending.plan
    if pending.ranked:  # greedy: the chosen token heads each row's ranking
        indices, values = host
        tokens, logprobs = [row[0] for row in indices], [row[0] for row in values]
    else:
        tokens, logprobs, values, indices = host if plan.k else (*host, [], [])
    tops: list[Mapping[int, float]]
    if plan.k == 0 or (plan.k == 1 and pending.ranked):  # LMQL's usual: the greedy choice alone
        tops = [ONLY_THE_CHOSEN] * len(tokens)
    else:
        tops = [_top(i, v, p.top_logprobs) for i, v, p in zip(indices, values, plan.params, strict=True)]
    return Samples(tokens, logprobs, tops)


def _top(indices: list[int], values: list[float], k: int) -> dict[int, float]:
    return {i: v for i, v in zip(indices[:k], values[:k], strict=True) if v != float("-inf")}


def sample_batch(ops: ArrayOps, logits: Any, params: list[SamplingParams], seed: int) -> Samples:
    return collect_sampling(ops, launch_sampling(ops, logits, SamplingPlan(params), seed))


@dataclass
class PendingScores:
    """A step's scoring queued on the device: the log-probs of every scored token of every
    SCORE request, in one array on its way to the host; ``counts[j]``: how many are request j's."""

    host_copy: Any
    counts: list[int]


def launch_scoring(ops: ArrayOps, logits: list[Any], targets: list[list[int]]) -> PendingScores:
    """Log-probability of ``targets[j][i]`` under row ``i`` of ``logits[j]``, for every request j
    at once: a log-softmax over all their rows (in parts of ``SCORE_ROWS``, which bounds its
    float32 memory) and one copy to the host, rather than a few operations and a copy per
    request (64 SCORE requests in a step: on a GPU host, each launch costs more than its work)."""
    rows = logits[0] if len(logits) == 1 else ops.concat(logits)
    flat = [token for request in targets for token in request]
    parts = [ops.take(ops.log_softmax(ops.prepare(rows[i : i + SCORE_ROWS])), flat[i : i + SCORE_ROWS])
             for i in range(0, len(flat), SCORE_ROWS)]
    return PendingScores(ops.start_host_copy(*parts), [len(t) for t in targets])


def collect_scoring(ops: ArrayOps, pending: PendingScores) -> list[list[float]]:
    """Each request's log-probs, in the order ``launch_scoring`` was given them."""
    values = [float(v) for part in ops.finish_host_copy(pending.host_copy) for v in part]
    scores, start = [], 0
    for count in pending.counts:
        scores.append(values[start : start + count])
        start += count
    return scores
