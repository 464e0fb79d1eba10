"""The ``openai:`` transport: LMTP requests answered by an OpenAI-compatible completions server.

``lmql.model("openai:NAME", endpoint="http://host:port/v1")`` gives an ``LLM`` whose GENERATE
requests are streamed ``/v1/completions`` calls and whose SCOREs are ``echo`` + ``logprobs``
calls. What the server can do is probed on first use (``client_features``): servers that name
tokens by id and take token-id prompts (ours, vLLM) are used as they are; for the others
(llama.cpp's servers) prompts go as text and token texts are mapped back to ids with the
client's tokenizer (``client_tokens``); masks the server cannot apply are applied here
(``client_steps``). Runs on the client loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from lmql_core.errors import ConnectionLost, LMQLError
from lmql_core.lmtp import wire
from lmql_core.lmtp.client.loop import client_loop
from lmql_core.lmtp.client.transport import LMTPClient
from lmql_core.loading.tokenizer import Tokenizer
from lmql_core.openai_compat.client_features import Features, HTTPStatusError, ServerFeatureWarning, probe
from lmql_core.openai_compat.client_http import OpenAIHTTP
from lmql_core.openai_compat.client_steps import chosen_tokens
from lmql_core.openai_compat.client_structured import StructuredOutputs, probe_structured
from lmql_core.openai_compat.client_tokens import TokenTexts

DEFAULT_ENDPOINT = "http://localhost:8080/v1"
# LMTP's GENERATE fields an OpenAI completions request takes under the same name
PASSED_ON = ("temperature", "top_p", "top_k", "seed", "repetition_penalty")
REFUSED = (400, 413, 422)
RESUMPTIONS = 3  # of a stream the server ended early (for another request)
Handler = Callable[[Any, dict[str, Any]], Awaitable[None]]


@dataclass
class ServedModel:
    name: str
    features: Features
    texts: TokenTexts | None  # None: no tokenizer known, the server must name tokens by id
    # set once the server ended a stream for another request (llama-cpp-python's
    # interrupt_requests): from then on one request at a time
    one_at_a_time: asyncio.Lock | None = None

    def turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.one_at_a_time or contextlib.nullcontext()

    def serialize(self, base_url: str) -> None:
        if self.one_at_a_time is None:
            self.one_at_a_time = asyncio.Lock()
            warnings.warn(f"the server at {base_url} ({self.name!r}) ends a stream when another request "
                          "comes: requests go to it one at a time", ServerFeatureWarning, stacklevel=2)

    split_told: bool = False  # warned that a prompt's tokens were not its text's own

    def prompt(self, ids: list[int]) -> list[int] | str:
        if self.features.token_prompts or self.texts is None:
            return ids
        if not self.split_told and not self.texts.round_trips(ids):
            self.split_told = True
            warnings.warn(f"{self.name!r}: a prompt's tokens are not its text's own tokenization (a value "
                          "generated in another split than the text's), and this server takes prompts "
                          "only as text: it sees the text's tokens, so results may differ from a server "
                          "that takes token ids", ServerFeatureWarning, stacklevel=2)
        return self.texts.prompt_text(ids, self.features.adds_bos)

    def token_id(self, token: str) -> int:
        if self.texts is None:
            return TokenTexts.id_of_named(token)
        return self.texts.token_id(token)


class OpenAIClient(LMTPClient):
    cancels = True  # abandoning a request closes its HTTP response: the server stops it
    _shared: ClassVar[dict[tuple[str, str | None], OpenAIClient]] = {}

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        super().__init__()
        self.http = OpenAIHTTP(base_url, api_key)
        self.base_url = self.http.base_url
        self._requests: dict[Any, asyncio.Task[None]] = {}
        self._models: dict[str, dict[str, Any]] | None = None
        self._tokenizers: dict[str, Callable[[], Awaitable[Tokenizer]]] = {}
        self._served: dict[str, ServedModel] = {}
        self._probing: dict[str, asyncio.Lock] = {}
        self._structured_outputs: dict[str, StructuredOutputs] = {}
        self._probing_structured: dict[str, asyncio.Lock] = {}

    @classmethod
    def shared(cls, endpoint: str | None = None, api_key: str | None = None, **_: Any) -> OpenAIClient:
        """One client per process, endpoint and key."""
        base_url = base_url_of(endpoint)
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("LMQL_AUTH_TOKEN")
        key = (base_url, api_key)
        if key not in cls._shared:
            cls._shared[key] = asyncio.run_coroutine_threadsafe(_construct(cls, base_url, api_key),
                                                                client_loop()).result()
        return cls._shared[key]

    def use_tokenizer(self, model: str, tokenizer: Callable[[], Awaitable[Tokenizer]]) -> None:
        """The model's tokenizer (a coroutine function, awaited on the client loop when needed):
        for servers that take text prompts or name tokens by text."""
        self._tokenizers.setdefault(model, tokenizer)

    async def _send(self, command: str, payload: dict[str, Any]) -> None:
        stream_id = payload.get("stream_id")
        if command == wire.CANCEL:
            task = self._requests.pop(stream_id, None)
            if task is not None:
                task.cancel()
            return
        handlers: dict[str, Handler] = {"GENERATE": self._generate, "SCORE": self._score,
                                        "MODEL_INFO": self._model_info}
        handler = handlers.get(command)
        if handler is None:
            raise LMQLError(f"{command} is not available over OpenAI's API")
        self._requests[stream_id] = asyncio.create_task(self._run(handler, stream_id, payload))

    async def _run(self, handler: Handler, stream_id: Any, payload: dict[str, Any]) -> None:
        try:
            await handler(stream_id, payload)
        except asyncio.CancelledError:
            raise
        except (OSError, ConnectionLost) as error:  # aiohttp's connection errors are OSErrors
            lost = f"cannot reach {self.base_url}: {error}"
            self._dispatch("TOKEN", [{"stream_id": stream_id, "error": lost, "lost": True}])
        except Exception as error:  # the stream's error, as an LMTP server would send it
            self._dispatch("TOKEN", [{"stream_id": stream_id, "error": str(error)}])
        finally:
            self._requests.pop(stream_id, None)

    # --- what the server is and can do ------------------------------------------------------

    async def _model_info(self, stream_id: Any, payload: dict[str, Any]) -> None:
        name = payload.get("model")
        models = await self._served_models()
        if name not in models:  # a server that loads on demand may have it by now
            self._models = None
            models = await self._served_models()
        if name not in models:
            served = ", ".join(map(repr, models)) or "nothing"
            raise LMQLError(f"the server at {self.base_url} serves {served}, not {name!r}")
        constraints = (await self._structured(name)).follows()
        info = {"model": name, "max_context": models[name].get("max_model_len"),
                "extensions": {"tokenizer": None, "text": False, "cancel": True, "constraints": constraints}}
        self._dispatch("MSG", [{"stream_id": stream_id, "model": name, "model_info": info}])

    async def _served_models(self) -> dict[str, dict[str, Any]]:
        if self._models is None:
            answer = await self.http.get("/models")
            self._models = {m["id"]: m for m in answer.get("data", []) if isinstance(m, dict)}
        return self._models

    async def _model(self, name: str) -> ServedModel:
        """The model with what its server can do, probed once (and said once, as a warning)."""
        if name in self._served:
            return self._served[name]
        async with self._probing.setdefault(name, asyncio.Lock()):
            if name not in self._served:
                get_tokenizer = self._tokenizers.get(name)
                if get_tokenizer is None:  # no tokenizer to probe with: a server that speaks ids
                    self._served[name] = ServedModel(name, Features(), None)
                else:
                    texts = TokenTexts(await get_tokenizer())
                    features = await probe(self.http.post, self.base_url, name, texts)
                    self._served[name] = ServedModel(name, features, texts)
        return self._served[name]

    async def _structured(self, name: str) -> StructuredOutputs:
        """Which constraints the server follows, and how (probed once per model, on first need:
        MODEL_INFO or a constrained GENERATE; without the tokenizer, which MODEL_INFO comes before)."""
        async with self._probing_structured.setdefault(name, asyncio.Lock()):
            if name not in self._structured_outputs:
                found = await probe_structured(self.http.post, self.base_url, name)
                self._structured_outputs[name] = found
        return self._structured_outputs[name]

    async def _room(self, model: str, prompt_length: int) -> int:
        """As many tokens as the context leaves (LMTP's limit without max_tokens: until EOS)."""
        context = (await self._served_models()).get(model, {}).get("max_model_len")
        return max(1, int(context) - prompt_length) if context else wire.Limits().max_tokens

    # --- GENERATE ------------------------------------------------------------------------------

    async def _generate(self, stream_id: Any, payload: dict[str, Any]) -> None:
        served = await self._model(payload["model"])
        if wire.constraint(payload) is not None:
            (await self._structured(served.name)).body_fields(payload)  # an error where the server cannot
        bias = payload.get("logit_bias")
        request = payload
        if bias:
            fitting = self._fitting_bias(served, bias)
            if fitting is None:
                return await self._generate_here(stream_id, served, payload)
            request = {**payload, "logit_bias": fitting}
        if payload.get("top_logprobs") and served.texts is not None and not served.features.token_ids:
            return await self._generate_here(stream_id, served, payload)  # EOS would hide the distribution
        try:
            await self._generate_streamed(stream_id, served, request)
        except HTTPStatusError as error:
            if not (bias and error.status in REFUSED and "logit_bias" in str(error).lower()):
                raise
            served.features.logit_bias_cap = len(request["logit_bias"]) - 1  # too many: fewer, or here
            await self._generate(stream_id, payload)

    def _fitting_bias(self, served: ServedModel, bias: dict[str, Any]) -> dict[str, Any] | None:
        """``bias`` as the server takes it: itself, or (over its cap) the same mask written the
        other way round (+v on the allowed tokens for -v on the others); None: apply it here."""
        features = served.features
        if not features.logit_bias:
            return None
        cap = features.logit_bias_cap
        if cap is None or len(bias) <= cap:
            return bias
        values = set(bias.values())
        vocab = int(served.texts.tokenizer.vocab_size) if served.texts else 0
        if len(values) != 1 or not vocab or vocab - len(bias) > cap:
            return None
        flipped = -next(iter(values))
        return {str(i): flipped for i in range(vocab) if str(i) not in bias}

    async def _generate_streamed(self, stream_id: Any, served: ServedModel, payload: dict[str, Any]) -> None:
        """One streamed completion; where the server ends it early for another request, the rest
        is asked for again (after the tokens received), one request at a time from then on."""
        prompt = payload["prompt"]
        room = await self._room(payload["model"], len(prompt))
        limit = min(payload.get("max_tokens") or room, room)  # LMTP stops at the context's end
        received: list[int] = []
        held: dict[str, Any] | None = None  # the last token, sent once we know whether it ends the stream
        text = ""
        for _ in range(RESUMPTIONS + 1):
            if held is not None and len(received) >= limit:  # ended for another request just at its end
                return self._finish(stream_id, served, held, text, "length")
            body = self._completion_body(served, payload)
            body.update(prompt=served.prompt(prompt + received), stream=True,
                        max_tokens=limit - len(received))
            async with served.turn():
                async for chunk in self.http.events("/completions", body):
                    for choice in chunk.get("choices", []):
                        text += choice.get("text") or ""
                        for entry in self._entries(stream_id, served, choice.get("logprobs")):
                            if held is not None:
                                self._dispatch("TOKEN", [held])
                            held = entry
                            received.append(entry["token"])
                        if choice.get("finish_reason") is not None:
                            return self._finish(stream_id, served, held, text, choice["finish_reason"])
            if not served.features.logprobs or wire.constraint(payload) is not None:
                break  # no token ids to go on from, or a constraint that would start over
            served.serialize(self.base_url)
        raise ConnectionLost("the server's stream ended without a finish_reason")

    def _completion_body(self, served: ServedModel, payload: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {name: payload[name] for name in PASSED_ON if payload.get(name) is not None}
        body["model"] = payload["model"]
        if served.features.logprobs:
            body["logprobs"] = max(1, int(payload.get("top_logprobs") or 0))
        if served.features.token_ids:
            body["return_tokens_as_token_ids"] = True
        if payload.get("logit_bias"):
            body["logit_bias"] = payload["logit_bias"]
        if wire.constraint(payload) is not None:  # probed by then (_generate)
            body.update(self._structured_outputs[served.name].body_fields(payload))
        if served.texts is not None and not served.features.token_ids:
            # llama.cpp's servers' defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) are not LMTP's
            body.setdefault("top_k", 0)
            body.update(min_p=0.0, repeat_penalty=payload.get("repetition_penalty") or 1.0)
        return body

    def _finish(self, stream_id: Any, served: ServedModel, held: dict[str, Any] | None, text: str,
                finish_reason: str) -> None:
        if not served.features.logprobs:  # the tokens from the text, log-probabilities unknown
            entries = self._entries_of_text(stream_id, served, text)
            held = entries.pop() if entries else None
            if entries:
                self._dispatch("TOKEN", entries)
        eos = served.texts.eos if served.texts else None
        if finish_reason != "length" and eos is not None and (held is None or held["token"] != eos):
            if held is not None:  # the server stopped at EOS without sending it (llama.cpp's do)
                self._dispatch("TOKEN", [held])
            held = {"stream_id": stream_id, "token": eos, "logprob": float("nan"), "top_logprobs": {}}
        if held is None:
            raise LMQLError("the server ended the stream without a token")
        held["finish_reason"] = "length" if finish_reason == "length" else "stop"
        self._dispatch("TOKEN", [held])

    def _entries(self, stream_id: Any, served: ServedModel, logprobs: dict[str, Any] | None,
                 scored: bool = False) -> Iterator[dict[str, Any]]:
        if not logprobs:
            return
        tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
        for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True):
            entry = {"stream_id": stream_id, "token": served.token_id(token),
                     "logprob": wire.LOWEST_LOGPROB if logprob is None else logprob, "finish_reason": None}
            if not scored:
                entry["top_logprobs"] = self._tops(served, top)
            yield entry

    def _tops(self, served: ServedModel, top: dict[str, float] | None) -> dict[str, float]:
        if served.texts is None:
            return {str(served.token_id(t)): lp for t, lp in (top or {}).items()}
        return served.texts.top_logprobs(top)

    def _entries_of_text(self, stream_id: Any, served: ServedModel, text: str) -> list[dict[str, Any]]:
        if served.texts is None:
            raise LMQLError(f"the server at {self.base_url} sends no logprobs: pass tokenizer= to map "
                            "its text to tokens")
        ids = served.texts.tokenizer.encode(text, add_special_tokens=False) if text else []
        return [{"stream_id": stream_id, "token": i, "logprob": float("nan"), "finish_reason": None,
                 "top_logprobs": {}} for i in ids]

    async def _generate_here(self, stream_id: Any, served: ServedModel, payload: dict[str, Any]) -> None:
        """Tokens chosen on the client, one request each (see ``client_steps``)."""
        if wire.constraint(payload) is not None:
            raise LMQLError(f"the server at {self.base_url} follows constraints but cannot apply this mask "
                            "or give this distribution with one: the two cannot be combined here")
        if served.texts is None or not served.features.echo:
            raise LMQLError(f"the server at {self.base_url} cannot apply this mask (logit_bias) and lacks "
                            "echo with logprobs, which masking on the client needs")
        vocab = int(served.texts.tokenizer.vocab_size)

        async def distribution(ids: list[int], k: int) -> dict[int, float]:
            return await self._distribution(served, ids, k)

        top_k = min(vocab, served.features.top_logprobs_cap or vocab)
        async for entry in chosen_tokens(distribution, payload, vocab, served.texts.eos, top_k):
            self._dispatch("TOKEN", [{**entry, "stream_id": stream_id}])

    async def _distribution(self, served: ServedModel, ids: list[int], k: int) -> dict[int, float]:
        """The top ``k`` next-token log-probabilities after ``ids`` (a server capping ``logprobs``
        lower has its cap learnt here). Servers that name tokens by id send a generated EOS with
        its log-probabilities: one greedy token tells them. The others (llama.cpp's) send nothing
        for EOS: the echo of ``ids`` + EOS tells them, at EOS's position."""
        assert served.texts is not None and served.texts.eos is not None
        eos = served.texts.eos
        by_echo = not served.features.token_ids
        asked = ids + [eos] if by_echo else ids
        body = {**self._completion_body(served, {"model": served.name}), "prompt": served.prompt(asked),
                "max_tokens": 1, "temperature": 0, "echo": by_echo, "logprobs": k}
        try:
            async with served.turn():
                answer = await self.http.post("/completions", body)
        except HTTPStatusError as error:
            if error.status not in REFUSED or "logprobs" not in str(error) or k <= 1:
                raise
            served.features.top_logprobs_cap = k // 2
            return await self._distribution(served, ids, k // 2)
        logprobs = answer["choices"][0]["logprobs"]
        at = served.texts.echo_position(logprobs["tokens"], asked) + len(ids) if by_echo else 0
        found = {int(t): lp for t, lp in self._tops(served, logprobs["top_logprobs"][at]).items()}
        found[served.token_id(logprobs["tokens"][at])] = float(logprobs["token_logprobs"][at])
        return found

    # --- SCORE -------------------------------------------------------------------------------

    async def _score(self, stream_id: Any, payload: dict[str, Any]) -> None:
        served = await self._model(payload["model"])
        if not (served.features.logprobs and served.features.echo):
            raise LMQLError(f"the server at {self.base_url} cannot score: it lacks echo with logprobs")
        prompt, scored = payload["prompt"], payload["scored"]
        ids = prompt + scored
        body = {**self._completion_body(served, payload), "prompt": served.prompt(ids),
                "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
        async with served.turn():
            answer = await self.http.post("/completions", body)
        logprobs = answer["choices"][0]["logprobs"]
        start = len(prompt) + (served.texts.echo_position(logprobs["tokens"], ids) if served.texts else 0)
        end = start + len(scored)
        kept = {key: logprobs[key][start:end] for key in ("tokens", "token_logprobs")}  # only these are read
        entries = list(self._entries(stream_id, served, kept, scored=True))
        if [e["token"] for e in entries] != scored:
            text_only = "" if served.features.token_prompts else (
                ": it takes the prompt only as text and splits prompt and value together otherwise "
                "than the client's tokens of each")
            raise LMQLError(f"the server's echo does not give back the scored tokens{text_only}")
        entries[-1]["finish_reason"] = "stop"
        self._dispatch("TOKEN", entries)


def base_url_of(endpoint: str | None) -> str:
    """``http://host:port/v1`` from what a user passes (a bare ``host:port`` gets ``http://`` and ``/v1``)."""
    if not endpoint:
        return DEFAULT_ENDPOINT
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint if endpoint.rstrip("/").endswith("/v1") else endpoint.rstrip("/") + "/v1"


async def _construct(cls: type[OpenAIClient], base_url: str, api_key: str | None) -> OpenAIClient:
    return cls(base_url, api_key)  # on the client loop, which its tasks belong to
