"""Tokens chosen on the client, one per request, from the server's top log-probabilities.

For servers that do not honour ``logit_bias`` (or cap it below a mask's size), and for requests
that need the whole next-token distribution from servers that hide it when they generate EOS
(llama.cpp's). Each step echoes the prompt plus EOS (a token no text merges with) and reads the
top log-probabilities at EOS's position: the distribution after the prompt, before any bias.
The bias is then applied here. Greedy steps are exact whenever an allowed token is among the top
ones returned (the best allowed token then is too); sampling needs the whole distribution.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from lmql_core.errors import LMQLError

# (prompt ids, how many top log-probabilities) -> {token id: logprob} after the prompt
Distribution = Callable[[list[int], int], Awaitable[dict[int, float]]]


async def chosen_tokens(distribution: Distribution, payload: dict[str, Any], vocab_size: int,
                        eos: int | None, top_k: int) -> AsyncIterator[dict[str, Any]]:
    """LMTP TOKEN entries (without stream ids) for one GENERATE, chosen here step by step."""
    prompt = list(payload["prompt"])
    bias = {int(k): float(v) for k, v in (payload.get("logit_bias") or {}).items()}
    temperature = float(payload.get("temperature") or 0.0)
    wanted_tops = int(payload.get("top_logprobs") or 0)
    rng = random.Random(payload.get("seed"))
    max_tokens = int(payload.get("max_tokens") or 1)
    for count in range(1, max_tokens + 1):
        logprobs = await distribution(prompt, top_k)
        if temperature > 0 and len(logprobs) < vocab_size:
            raise LMQLError(f"sampling under a mask needs logit_bias or all {vocab_size} log-probabilities "
                            f"from the server; it gave {len(logprobs)}")
        token = _choose(logprobs, bias, temperature, rng)
        tops = sorted(logprobs.items(), key=lambda item: -item[1])[:wanted_tops]
        finish = "stop" if token == eos else "length" if count == max_tokens else None
        yield {"token": token, "logprob": logprobs[token], "finish_reason": finish,
               "top_logprobs": {str(t): lp for t, lp in tops}}
        if finish is not None:
            return
        prompt.append(token)


def _choose(logprobs: dict[int, float], bias: dict[int, float], temperature: float,
            rng: random.Random) -> int:
    scores = {token: logprob + bias.get(token, 0.0) for token, logprob in logprobs.items()}
    only = bool(bias) and all(v > 0 for v in bias.values())
    if only:  # +bias on the allowed tokens: the others are out
        scores = {t: s for t, s in scores.items() if t in bias}
    else:
        scores = {t: s for t, s in scores.items() if bias.get(t, 0.0) > -100}
    if not scores:
        raise LMQLError(f"none of the {len(logprobs)} most likely tokens the server returned is allowed "
                        "by the mask, and the server does not honour logit_bias")
    if temperature <= 0:
        best = max(scores.values())
        return min(t for t, s in scores.items() if s == best)  # ties to the lowest id, as LMTP
    peak = max(scores.values())
    weights = {t: math.exp((s - peak) / temperature) for t, s in scores.items()}
    pick = rng.random() * sum(weights.values())
    for token, weight in sorted(weights.items()):
        pick -= weight
        if pick <= 0:
            return token
    return max(weights, key=lambda t: weights[t])
