"""Generating one prompt variable under its constraints, token by token, over LMTP.

The mask of each step goes to the server as ``logit_bias`` (as LMQL sends it: +100 on the
allowed tokens when they are fewer, else -100 on the others). One request streams as long as
the mask stays the same; when it changes, the stream is left and a new request carries the new
mask. A single allowed token is taken without asking the model, as LMQL does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from lmql_core.api.llm import LLM
from lmql_core.query.server_side import generate_on_server, server_constraint, server_constraints_enabled
from lmql_core.query.variable import OnToken, Sampling, Step, Variable


async def generate(model: LLM, prompt_ids: list[int], variable: Variable, sampling: Sampling,
                   max_length: int, on_token: OnToken | None = None) -> list[int]:
    """The tokens of ``variable`` (without EOS) after ``prompt_ids``; ``on_token(ids)`` is
    awaited after each one. A variable the server can constrain alone goes there (server_side.py)."""
    on_server = server_constraint(variable) if type(variable) is Variable and server_constraints_enabled() \
        else None
    if on_server is not None and await model.follows(on_server[0]):
        return await generate_on_server(model, prompt_ids, variable, sampling, max_length, on_server,
                                        on_token)
    ids: list[int] = []
    step = variable.step(ids)
    while not step.done and len(prompt_ids) + len(ids) < max_length:
        forced = step.forced()
        if forced is not None:
            ids.append(forced)
            if on_token is not None:
                await on_token(ids)
            step = variable.step(ids)
            continue
        budget = min(variable.token_limit(ids, sampling.chunk), max_length - len(prompt_ids) - len(ids))
        entries = model.token_stream(prompt_ids + ids, budget, sampling.temperature,
                                     step.logit_bias(variable.vocab), **(sampling.options or {}))
        ended, step = await _stream(entries, ids, variable, step, budget, on_token)
        if ended:
            break
    return ids


async def _stream(stream: AsyncGenerator[dict[str, Any], None], ids: list[int], variable: Variable,
                  step: Step, budget: int, on_token: OnToken | None) -> tuple[bool, Step]:
    """Consume one request while its mask holds; ``(variable ended, next step)``."""
    received = 0
    async with aclosing(stream) as entries:
        async for entry in entries:
            token = entry["token"]
            if token == variable.vocab.eos:
                return True, step
            ids.append(token)
            received += 1
            if on_token is not None:
                await on_token(ids)
            following = variable.step(ids)
            if entry.get("finish_reason") == "length" and received < budget:
                return True, following  # the model's context is full: the value ends here
            if following.done or not following.same_mask(step) or received >= budget:
                return False, following
            step = following
    return False, step
