"""Token selection for a batch, defined once for every backend.

Per row: apply the stream's repetition penalty (as transformers does), add its logit bias (-100
or less bans a token, +100 or more restricts the choice to the tokens so biased), take
log-softmax, then pick the argmax (temperature 0) or sample at the stream's temperature
(Gumbel-max) among its top-k / top-p tokens. The reported log-probs are those of the biased
distribution at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmql_core.engine.array_ops import ArrayOps
from lmql_core.engine.sequence import SamplingParams

BAN_AT = -100.0
FORCE_AT = 100.0
FORCE_BIAS = 1e4  # large enough that unforced tokens get probability 0 in float32


@dataclass
class Sample:
    token: int
    logprob: float
    top_logprobs: dict[int, float]


def effective_bias(value: float) -> float:
    if value <= BAN_AT:
        return float("-inf")
    if value >= FORCE_AT:
        return FORCE_BIAS
    return value


def apply_bias(ops: ArrayOps, logits: Any, params: list[SamplingParams]) -> Any:
    rows = [i for i, p in enumerate(params) if p.logit_bias]
    if not rows:
        return logits
    for i in rows:  # dense rows are built once per stream: LMQL masks hold half the vocabulary
        if params[i].dense_bias is None:
            bias = {t: effective_bias(b) for t, b in params[i].logit_bias.items()}
            params[i].dense_bias = ops.bias_row(bias, logits)
    return ops.add_rows(logits, rows, [params[i].dense_bias for i in rows])


@dataclass
class PendingSamples:
    """Sampling queued on the device: its results (``tokens`` stays on the device, for a next
    step fed from it), their copy to the host under way, and the settings per row."""

    tokens: Any
    host_copy: Any
    params: list[SamplingParams]
    k: int
    ranked: bool = False  # greedy everywhere: the host gets only the ranking, best first


def launch_sampling(ops: ArrayOps, logits: Any, params: list[SamplingParams], seed: int,
                    histories: list[list[int]] | None = None) -> PendingSamples:
    """``histories[i]``: the tokens of row i's sequence so far (for its repetition penalty)."""
    logits = ops.prepare(logits)
    for row, p in enumerate(params):  # first, as transformers' processors run before LMQL's bias
        if p.repetition_penalty != 1.0 and histories:
            logits = ops.penalize(logits, row, histories[row], p.repetition_penalty)
    logprobs = ops.log_softmax(apply_bias(ops, logits, params))
    sampled_rows = [i for i, p in enumerate(params) if p.temperature > 0]
    k = max((p.top_logprobs for p in params), default=0)
    if not sampled_rows:  # the chosen token heads the top list: fewer operations per step
        values, indices = ops.topk(logprobs, max(k, 1))
        return PendingSamples(indices[:, 0], ops.start_host_copy(indices, values), params, k, ranked=True)
    scores = ops.scale_rows(logprobs, [1.0 / p.temperature if p.temperature > 0 else 1.0 for p in params])
    if any(params[i].top_k or params[i].top_p < 1.0 for i in sampled_rows):
        sampled = [p.temperature > 0 for p in params]  # greedy rows keep every token
        ks = [p.top_k if s else 0 for p, s in zip(params, sampled, strict=True)]
        ps = [p.top_p if s else 1.0 for p, s in zip(params, sampled, strict=True)]
        scores = ops.keep_top(scores, ks, ps)
    scores = ops.add_gumbel(scores, sampled_rows, seed)
    tokens = ops.argmax(scores)
    arrays = [tokens, ops.take(logprobs, tokens)]
    if k > 0:
        arrays.extend(ops.topk(logprobs, k))
    return PendingSamples(tokens, ops.start_host_copy(*arrays), params, k)


def collect_sampling(ops: ArrayOps, pending: PendingSamples) -> list[Sample]:
    host = ops.finish_host_copy(pending.host_copy)
    if pending.ranked:
        return [Sample(int(indices[0]), float(values[0]), _top(indices, values, p.top_logprobs))
                for indices, values, p in zip(host[0], host[1], pending.params, strict=True)]
    return [Sample(int(host[0][row]), float(host[1][row]),
                   _top(host[3][row], host[2][row], p.top_logprobs) if pending.k else {})
            for row, p in enumerate(pending.params)]


def _top(indices: list[int], values: list[float], k: int) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(indices[:k], values[:k], strict=True) if v != float("-inf")}


def sample_batch(ops: ArrayOps, logits: Any, params: list[SamplingParams], seed: int) -> list[Sample]:
    return collect_sampling(ops, launch_sampling(ops, logits, params, seed))


def launch_scoring(ops: ArrayOps, logits: Any, targets: list[int]) -> Any:
    """Log-probability of ``targets[i]`` under row ``i`` of ``logits``, on its way to the host."""
    return ops.start_host_copy(ops.take(ops.log_softmax(ops.prepare(logits)), targets))


def collect_scoring(ops: ArrayOps, pending: Any) -> list[float]:
    return [float(v) for v in ops.finish_host_copy(pending)[0]]
