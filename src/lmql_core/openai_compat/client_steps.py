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

FEW = 64  # top log-probabilities asked first
BAN_AT, ONLY_AT = -100.0, 100.0  # LMTP's: a bias this low bans a token, this high keeps only such
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
        logprobs = await _enough(distribution, prompt, bias, temperature, wanted_tops, top_k)
        if temperature > 0 and len(logprobs) < vocab_size:
            raise LMQLError(f"sampling under a mask needs logit_bias or all {vocab_size} log-probabilities "
                            f"from the server; it gave {len(logprobs)}")
        biased = _biased(logprobs, bias)
        token = _choose(biased, temperature, rng)
        tops = sorted(biased.items(), key=lambda item: -item[1])[:wanted_tops]
        finish = "stop" if token == eos else "length" if count == max_tokens else None
        yield {"token": token, "logprob": biased[token], "finish_reason": finish,
               "top_logprobs": {str(t): lp for t, lp in tops}}
        if finish is not None:
            return
        prompt.append(token)


async def _enough(distribution: Distribution, prompt: list[int], bias: dict[int, float], temperature: float,
                  wanted_tops: int, top_k: int) -> dict[int, float]:
    """A few top log-probabilities where they decide the step exactly (no mask, or every token
    a +100 mask keeps among them); else as many as the server gives."""
    few = min(top_k, max(FEW, 2 * wanted_tops))
    if temperature > 0 or few == top_k:
        return await distribution(prompt, top_k)
    logprobs = await distribution(prompt, few)
    forced = {t for t, b in bias.items() if b >= ONLY_AT}
    if forced and forced <= logprobs.keys():
        return logprobs
    if not forced and _bans_only(bias) and bias.keys() <= logprobs.keys() and len(bias) < len(logprobs):
        return logprobs  # every banned token's probability is known, and one allowed token is there
    return await distribution(prompt, top_k)


def _bans_only(bias: dict[int, float]) -> bool:
    return all(b <= BAN_AT for b in bias.values())


def _biased(logprobs: dict[int, float], bias: dict[int, float]) -> dict[int, float]:
    """The log-probabilities of the biased distribution, as an LMTP server reports them: -100 or
    less bans a token, +100 or more keeps only the tokens so biased, others add; renormalized
    over the tokens returned (exact when they are all of them)."""
    forced = {t for t, b in bias.items() if b >= ONLY_AT}
    scores = {t: lp + (0.0 if t in forced else bias.get(t, 0.0)) for t, lp in logprobs.items()
              if bias.get(t, 0.0) > BAN_AT and (not forced or t in forced)}
    if not scores:
        raise LMQLError(f"none of the {len(logprobs)} most likely tokens the server returned is allowed "
                        "by the mask, and the server does not honour logit_bias")
    if not forced and _bans_only(bias):  # what the bans leave of the probability: known exactly
        left = 1.0 - sum(math.exp(lp) for t, lp in logprobs.items() if t in bias)
        if left > 0:
            return {t: s - math.log(left) for t, s in scores.items()}
    peak = max(scores.values())
    total = peak + math.log(sum(math.exp(s - peak) for s in scores.values()))
    return {t: s - total for t, s in scores.items()}


def _choose(biased: dict[int, float], temperature: float, rng: random.Random) -> int:
    if temperature <= 0:
        best = max(biased.values())
        return min(t for t, s in biased.items() if s == best)  # ties to the lowest id, as LMTP
    peak = max(biased.values())
    weights = {t: math.exp((s - peak) / temperature) for t, s in biased.items()}
    pick = rng.random() * sum(weights.values())
    for token, weight in sorted(weights.items()):
        pick -= weight
        if pick <= 0:
            return token
    return max(weights, key=lambda t: weights[t])
