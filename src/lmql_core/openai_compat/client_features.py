"""What an OpenAI-compatible completions server can do for LMQL, found by a probe on first use.

A few one-token requests, each a tiny prompt: does it take the prompt as token ids, name tokens
by id in log-probabilities (vLLM's ``return_tokens_as_token_ids``), give log-probabilities at
all, echo the prompt with them (scoring), honour ``logit_bias`` (masks), add BOS itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lmql_core.errors import LMQLError
from lmql_core.openai_compat.client_tokens import TOKEN_ID, TokenTexts

PROBE_TEXT = "Hello, world"
FORCED_CANDIDATES = (" the", " and", " of", "the", "a", ".")


class ServerFeatureWarning(UserWarning):
    """An OpenAI-compatible server lacks something LMQL uses; said once per server and model."""


class HTTPStatusError(LMQLError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Post = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Features:
    token_prompts: bool = True  # prompts as token ids
    token_ids: bool = True  # log-probabilities name tokens "token_id:N"
    logprobs: bool = True
    echo: bool = True  # the prompt's log-probabilities: what scoring needs
    logit_bias: bool = True
    adds_bos: bool = True  # to a text prompt
    logit_bias_cap: int | None = None  # most entries, once a request was refused for its size
    top_logprobs_cap: int | None = None  # most top log-probabilities, once a request was refused
    lacking: list[str] = field(default_factory=list)

    def describe_lacking(self) -> list[str]:
        said = []
        if not self.token_prompts:
            said.append("token-id prompts (prompts go as text, which the server tokenizes again)")
        if self.logprobs and not self.token_ids:
            said.append("token ids in logprobs (token texts are mapped back with the client's tokenizer)")
        if not self.logprobs:
            said.append("logprobs (tokens come from re-encoding the text; log-probabilities are unknown; "
                        "score() and beam search cannot run)")
        elif not self.echo:
            said.append("echo with logprobs (score() and distribution clauses cannot run)")
        if not self.logit_bias:
            said.append("logit_bias (constrained LMQL variables are masked on the client from the top "
                        "logprobs, one token per request)")
        return said


async def probe(post: Post, base_url: str, model: str, texts: TokenTexts) -> Features:
    features = Features()
    bos = [texts.bos] if texts.bos is not None else []
    ids = bos + texts.tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    plain = {"model": model, "max_tokens": 1, "temperature": 0}
    first = await post("/completions", {**plain, "prompt": PROBE_TEXT})  # its error is the server's answer
    features.adds_bos = _adds_bos(first, len(ids) - (texts.bos is not None))
    features.token_prompts = await _accepted(post, {**plain, "prompt": ids})
    prompt: Any = ids if features.token_prompts else texts.prompt_text(ids, features.adds_bos)
    forced = _forced_token(texts, _generated_text(first, ""))
    wanted = {"logprobs": 1, "return_tokens_as_token_ids": True}
    full = {**plain, **wanted, "prompt": prompt, "echo": True, "logit_bias": {str(forced): 100}}
    answer = await _answer(post, full)
    if answer is None:  # one of them is refused: each on its own
        with_logprobs = await _answer(post, {**plain, **wanted, "prompt": prompt})
        echoed = await _answer(post, {**plain, **wanted, "prompt": prompt, "echo": True})
        biased = await _answer(post, {**plain, **(wanted if with_logprobs else {}), "prompt": prompt,
                                      "logit_bias": {str(forced): 100}})
    else:
        with_logprobs = echoed = biased = answer
    logprobs = _logprobs(with_logprobs)
    features.logprobs = bool(logprobs and logprobs.get("tokens"))
    features.token_ids = features.logprobs and str(logprobs["tokens"][0]).startswith(TOKEN_ID)  # type: ignore[index]
    echoed_tokens = (_logprobs(echoed) or {}).get("tokens") or []
    features.echo = len(echoed_tokens) >= len(ids) - (texts.bos is not None)
    generated = _generated_id(biased, texts, prompt, echoed is biased) if biased is not None else None
    features.logit_bias = generated == forced
    features.lacking = features.describe_lacking()
    if features.lacking:
        warnings.warn(f"the OpenAI-compatible server at {base_url} ({model!r}) lacks: "
                      + "; ".join(features.lacking), ServerFeatureWarning, stacklevel=2)
    return features


async def _answer(post: Post, body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return await post("/completions", body)
    except HTTPStatusError:  # refused (or failed on it: llama-cpp-python without logits_all answers 500)
        return None


async def _accepted(post: Post, body: dict[str, Any]) -> bool:
    return await _answer(post, body) is not None


def _choice(answer: dict[str, Any] | None) -> dict[str, Any]:
    choices = (answer or {}).get("choices") or [{}]
    return choices[0] if isinstance(choices[0], dict) else {}


def _logprobs(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    found = _choice(answer).get("logprobs")
    return found if isinstance(found, dict) else None


def _generated_text(answer: dict[str, Any], prompt_text: str) -> str:
    text = str(_choice(answer).get("text") or "")
    return text[len(prompt_text):] if prompt_text and text.startswith(prompt_text) else text


def _generated_id(answer: dict[str, Any], texts: TokenTexts, prompt: Any, echoed: bool) -> int | None:
    logprobs = _logprobs(answer)
    try:
        if logprobs and logprobs.get("tokens"):
            return texts.token_id(str(logprobs["tokens"][-1]))
        prompt_text = prompt if isinstance(prompt, str) and echoed else ""
        return texts.token_id(_generated_text(answer, prompt_text))
    except LMQLError:
        return None


def _adds_bos(answer: dict[str, Any], text_tokens: int) -> bool:
    """From ``usage.prompt_tokens`` of a text prompt; without usage, as most servers do: yes."""
    usage = answer.get("usage")
    counted = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return not isinstance(counted, int) or counted > text_tokens


def _forced_token(texts: TokenTexts, unforced: str) -> int:
    """A token the model would not pick unbiased: the probe forces it with logit_bias."""
    for candidate in FORCED_CANDIDATES:
        found = texts.ids_by_text.get(candidate)
        if found is not None and candidate != unforced:
            return found
    return next(i for t, i in texts.ids_by_text.items() if t and t != unforced and i != texts.eos)
