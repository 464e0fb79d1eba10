"""``LLM``: a model as an LMQL program sees it, over LMTP or in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import aclosing
from typing import Any

from lmql_core.api import certificate as certificates
from lmql_core.api import tracing
from lmql_core.api.model_options import without_runtime_options
from lmql_core.api.scoring import ScoringResult
from lmql_core.api.tokenizers import TokenizerResolver
from lmql_core.base.decoders import TOKEN_DECODERS
from lmql_core.errors import LMQLError
from lmql_core.lmtp.client import LMTPClient
from lmql_core.lmtp.client.loop import run_async, run_sync
from lmql_core.lmtp.template import TEMPLATE
from lmql_core.lmtp.template import VERSION as TEMPLATE_VERSION
from lmql_core.lmtp.wire import CONSTRAINT_FIELDS
from lmql_core.loading.identifiers import ModelId
from lmql_core.loading.tokenizer import IncrementalDecoder, Tokenizer

TokenEntries = AsyncGenerator[dict[str, Any], None]


class LLM:
    def __init__(self, model_id: ModelId, client: LMTPClient, tokenizer: str | None = None,
                 decoding: dict[str, Any] | None = None, transport: str = "") -> None:
        self.model_id = model_id
        self.transport = transport  # a client transport's prefix (``openai:``), part of the identifier
        self.client = client
        # LMQL's per-model decoding options (chunksize, top_k, ...): queries on this model use them
        self.decoding: dict[str, Any] = dict(decoding or {})
        self.configuration: dict[str, Any] = {}
        self._tokenizers = TokenizerResolver(model_id, client, tokenizer, self._server_info)
        self._info: tuple[int, dict[str, Any]] | None = None  # (the connection it came over, MODEL_INFO)
        self.requests = 0  # GENERATE and SCORE requests sent so far (a query's context.num_calls)

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer in use: the server's own unless ``tokenizer=`` named another."""
        return run_sync(self._tokenizers.get())

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer in use (LMQL's name for ``tokenizer``)."""
        return self.tokenizer

    async def resolve_tokenizer(self) -> Tokenizer:
        """The tokenizer in use, from a coroutine on the client loop."""
        return await self._tokenizers.get()

    @property
    def model_identifier(self) -> str:
        return self.transport + str(self.model_id)

    @classmethod
    def from_descriptor(cls, model_identifier: str | LLM | None, **kwargs: Any) -> LLM:
        """LMQL's name for ``lmql.model(...)``; None is the default model."""
        from lmql_core import api

        if model_identifier is None:
            default = api.get_default_model()
            if default is None:
                raise RuntimeError("no default model: call lmql.set_default_model(...) or name one")
            return default
        return api.model(model_identifier, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<LLM {self.model_identifier}>"

    # --- token level: what the query runtime asks a model, one request each ----------------

    def token_stream(self, prompt_ids: list[int], max_tokens: int | None = None, temperature: float = 0.0,
                     logit_bias: Mapping[str, float] | None = None, top_logprobs: int | None = None,
                     **options: Any) -> AsyncGenerator[dict[str, Any], None]:
        """The token entries of one GENERATE request after ``prompt_ids``, as the server sends
        them (``token``, ``logprob``, ``top_logprobs``, ``finish_reason``); ``options`` are
        forwarded (``top_k``, ``top_p``, ``repetition_penalty``, ...). Close it to stop early."""
        request: dict[str, Any] = {"model": self.model_id.served_name, "prompt": list(prompt_ids),
                                   "temperature": temperature, **options}
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if logit_bias is not None:
            request["logit_bias"] = logit_bias
        if top_logprobs is not None:
            request["top_logprobs"] = top_logprobs
        self.requests += 1
        entries = self.client.request("GENERATE", request)
        tracer = tracing.active_tracer()
        if tracer is None:
            return entries
        sent = {k: v for k, v in request.items() if k not in ("model", "prompt")}
        kwargs = {"ids": request["prompt"], **sent}
        return self._traced_stream(tracer, kwargs, entries)

    async def _traced_stream(self, tracer: tracing.Tracer, kwargs: dict[str, Any],
                             entries: AsyncGenerator[dict[str, Any], None]) -> TokenEntries:
        """``entries``, recorded as LMQL records an LMTP request: ``lmtp.generate`` with the model,
        tokenizer and request, and ``result``, the tokens as they are taken."""
        event = tracer.event("lmtp.generate", await self._call_record(kwargs))
        async with aclosing(entries):
            async for entry in entries:
                if event is not None:
                    event.add("result", [entry["token"]])
                yield entry

    async def _call_record(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        tokenizer = await self._tokenizers.get()
        return {"model": await self._server_info(), "tokenizer": f"<Tokenizer of {self.model_identifier} "
                f"({type(tokenizer).__name__})>", "kwargs": kwargs}

    async def next_token_logprobs(self, prompt_ids: list[int], k: int,
                                  logit_bias: Mapping[str, float] | None = None,
                                  **options: Any) -> dict[int, float]:
        """The (at least) ``k`` most likely next tokens after ``prompt_ids`` with their
        log-probabilities, under ``logit_bias``."""
        async with aclosing(self.token_stream(prompt_ids, 1, 0.0, logit_bias, k, **options)) as entries:
            entry = await anext(entries)
        tops = {int(t): float(lp) for t, lp in (entry.get("top_logprobs") or {}).items()}
        tops.setdefault(int(entry["token"]), float(entry["logprob"]))
        return tops

    async def score_tokens(self, prompt_ids: list[int], scored: list[int]) -> list[float]:
        """The log-probability of each token of ``scored`` as the continuation of ``prompt_ids``."""
        if not scored:
            return []
        request = {"model": self.model_id.served_name, "prompt": list(prompt_ids), "scored": list(scored)}
        self.requests += 1
        logprobs = [e["logprob"] async for e in self.client.request("SCORE", request)]
        tracer = tracing.active_tracer()
        if tracer is not None:  # LMQL's SCORE requests go unrecorded; a certificate lists every request here
            record = await self._call_record({"ids": request["prompt"], "scored": request["scored"]})
            tracer.event("lmtp.score", {**record, "result": logprobs})
        return logprobs

    def _request(self, prompt_ids: list[int], max_tokens: int | None = None, decoder: str = "argmax",
                 temperature: float | None = None, **extra: Any) -> dict[str, Any]:
        if decoder not in TOKEN_DECODERS:
            raise ValueError(f"unknown decoder '{decoder}'; use one of {', '.join(TOKEN_DECODERS)}")
        if temperature is None:
            temperature = 1.0 if decoder == "sample" else 0.0
        if decoder == "argmax":
            temperature = 0.0
        return {"prompt_ids": prompt_ids, "max_tokens": max_tokens, "temperature": temperature,
                **self.request_options(), **extra}

    def request_options(self) -> dict[str, Any]:
        """The model's own decoding options sent with each request (``top_k``, ... given to
        ``lmql.model``), without ``chunksize``, which only sizes requests."""
        return {k: v for k, v in self.decoding.items() if k != "chunksize"}

    async def _tokens(self, prompt_ids: list[int], max_tokens: int | None = None,
                      **options: Any) -> AsyncGenerator[dict[str, Any], None]:
        """The entries of one continuation: at most ``max_tokens``, else until EOS.

        LMQL 0.7 servers batch requests and generate the batch's largest ``max_tokens`` for
        every stream (so entries past ours are dropped here), and without ``max_tokens`` they
        stop at 32 with ``"length"``; then, like LMQL's client, we ask for the rest.
        """
        generated: list[int] = []
        while True:
            remaining = None if max_tokens is None else max_tokens - len(generated)
            request = self._request(prompt_ids + generated, max_tokens=remaining, **options)
            finish = None
            async with aclosing(self.token_stream(**request)) as entries:
                async for entry in entries:
                    generated.append(entry["token"])
                    finish = entry.get("finish_reason")
                    yield entry
                    if len(generated) == max_tokens:
                        return
            if finish != "length" or max_tokens is not None or await self._length_is_final():
                return

    async def _length_is_final(self) -> bool:
        """Whether a ``"length"`` finish ends the continuation: it does from servers that
        advertise LMTP extensions (ours, which stop only at ``max_tokens`` or a full context),
        not from LMQL 0.7 servers, which also stop at their default ``max_tokens``."""
        return "extensions" in await self._server_info()

    async def _server_info(self) -> dict[str, Any]:
        """The served model's MODEL_INFO (asked once per connection: after a reconnect the server
        may have restarted with another model; ``{}`` from servers that say nothing)."""
        connection = await self.client.connection()
        if self._info is None or self._info[0] != connection:
            info = (await self.client.model_info(self.model_id.served_name)).get("model_info")
            self._info = (connection, info if isinstance(info, dict) else {})
        return self._info[1]

    def encode_prompt(self, text: str) -> list[int]:
        return run_sync(self._encode_prompt(text))

    async def encode_prompt_async(self, text: str) -> list[int]:
        return await self._encode_prompt(text)

    async def _encode_prompt(self, text: str) -> list[int]:
        """BOS (when the tokenizer has one) and the text's tokens: what LMQL 0.7 clients send."""
        tokenizer = await self._tokenizers.get()
        bos = tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + tokenizer.encode(text, add_special_tokens=False)

    # --- text level -----------------------------------------------------------------------

    async def _stream(self, prompt: str, **options: Any) -> AsyncGenerator[str, None]:
        options = without_runtime_options(options)  # LMQL's verbose=, cache=, ...: not the server's
        await self._check_constraints([k for k in CONSTRAINT_FIELDS if options.get(k) is not None])
        tokenizer = await self._tokenizers.get()
        decoder = IncrementalDecoder(tokenizer, skip={tokenizer.eos_token_id or -1})
        async with aclosing(self._tokens(await self._encode_prompt(prompt), **options)) as entries:
            async for entry in entries:
                yield decoder.push(entry["token"])
        yield decoder.flush()

    async def _generate_one(self, prompt: str, **options: Any) -> str:
        return "".join([d async for d in self._stream(prompt, **options)])

    async def _generate(self, prompt: str, max_tokens: int | None, decoder: str, temperature: float | None,
                        n: int, certificate: Any = False, **extra: Any) -> Any:
        """``certificate=`` as on a query (``certificates.deliver``); within ``lmql.traced`` the
        call records into a child tracer ``lmql.generate``, as LMQL's."""
        wanted = certificates.requested(certificate)
        with tracing.scope("lmql.generate", record=wanted) as tracer:
            texts = await self._texts(prompt, max_tokens, decoder, temperature, n, **extra)
            if wanted and tracer is not None:
                return certificates.deliver(certificate, tracer, texts)
        return texts

    async def _texts(self, prompt: str, max_tokens: int | None, decoder: str,
                     temperature: float | None, n: int, **extra: Any) -> str | list[str]:
        extra = {k: v for k, v in extra.items() if not (k in CONSTRAINT_FIELDS and v is None)}
        options = dict(max_tokens=max_tokens, decoder=decoder, temperature=temperature, **extra)
        if n == 1:
            return await self._generate_one(prompt, **options)
        return list(await asyncio.gather(*(self._generate_one(prompt, **options) for _ in range(n))))

    async def generate(self, prompt: str, max_tokens: int | None = None, decoder: str = "argmax",
                       temperature: float | None = None, n: int = 1, *, regex: str | None = None,
                       grammar: str | None = None, json_schema: dict[str, Any] | str | None = None,
                       **extra: Any) -> str | list[str]:
        """The continuation of ``prompt`` (a list of ``n`` of them when ``n > 1``). At most one of
        ``regex``, ``grammar`` (Lark-like, llguidance's syntax) and ``json_schema`` constrains it,
        on the server (its "constraints" extension; a server without it is an error): the text
        matches it whole, or stops at ``max_tokens``."""
        return await run_async(self._generate(prompt, max_tokens, decoder, temperature, n, regex=regex,
                                              grammar=grammar, json_schema=json_schema, **extra))

    def generate_sync(self, prompt: str, max_tokens: int | None = None, decoder: str = "argmax",
                      temperature: float | None = None, n: int = 1, *, regex: str | None = None,
                      grammar: str | None = None, json_schema: dict[str, Any] | str | None = None,
                      **extra: Any) -> str | list[str]:
        return run_sync(self._generate(prompt, max_tokens, decoder, temperature, n, regex=regex,
                                       grammar=grammar, json_schema=json_schema, **extra))

    async def runs_templates(self, tokenizer: Any) -> bool:
        """Whether the server runs whole LMQL templates (the "template" extension in MODEL_INFO)
        with the same tokenizer as ``tokenizer`` (the one the client masks and re-tokenizes with)."""
        extensions = (await self._server_info()).get("extensions")
        if not isinstance(extensions, dict) or extensions.get(TEMPLATE) != TEMPLATE_VERSION:
            return False
        fingerprint = getattr(tokenizer, "fingerprint", None)
        return fingerprint is not None and fingerprint() == extensions.get("tokenizer")

    def template_stream(self, prompt_ids: list[int],
                        template: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The entries of one template GENERATE (``lmtp/template.py``): each hole's tokens, tagged."""
        self.requests += 1
        request = {"model": self.model_id.served_name, "prompt": list(prompt_ids), TEMPLATE: template}
        return self.client.request("GENERATE", request)

    async def follows(self, constraint: str) -> bool:
        """Whether the server follows GENERATE's ``constraint`` field (``regex``, ``grammar``,
        ``json_schema``: the "constraints" extension in MODEL_INFO)."""
        extensions = (await self._server_info()).get("extensions")
        served = extensions.get("constraints") if isinstance(extensions, dict) else None
        return isinstance(served, list) and constraint in served

    async def _check_constraints(self, asked: list[str]) -> None:
        """Whether the server can follow the constraints ``asked`` (else a clear error, rather than
        a server that ignores the field and generates anything)."""
        if not asked:
            return
        missing = [k for k in asked if not await self.follows(k)]
        if missing:
            raise LMQLError(f"{self.model_identifier} does not follow {', '.join(missing)} constraints "
                            "(its server does not say it does: LMTP's MODEL_INFO extensions, or, on an "
                            "OpenAI-compatible server, structured outputs that the probe found obeyed)")

    def stream_sync(self, prompt: str, **options: Any) -> Iterator[str]:
        """Text deltas of one continuation, as they arrive. Leaving the loop early ends the
        stream (the server stops generating it where it supports CANCEL)."""
        deltas = self._stream(prompt, **options)

        async def next_delta() -> str | None:
            return await anext(deltas, None)

        try:
            while (delta := run_sync(next_delta())) is not None:
                yield delta
        finally:
            run_sync(deltas.aclose())

    async def _score(self, prompt: str, values: list[str] | str) -> ScoringResult:
        values = [values] if isinstance(values, str) else list(values)
        if not values:
            raise ValueError("score() needs at least one value to score")
        prompt_ids = await self._encode_prompt(prompt)
        tokenizer = await self._tokenizers.get()

        scored = [tokenizer.encode(v, add_special_tokens=False) for v in values]
        with tracing.scope(f"{self!r}.score"):  # as LMQL's score: a child of the active tracer
            logprobs = list(await asyncio.gather(*(self.score_tokens(prompt_ids, ids) for ids in scored)))
        bos = tokenizer.bos_token_id
        shown = prompt_ids[1:] if bos is not None and prompt_ids[:1] == [bos] else prompt_ids
        return ScoringResult(prompt, values, logprobs, self.model_identifier, shown, scored)

    async def score(self, prompt: str, values: list[str] | str) -> ScoringResult:
        """Log-probabilities of each value as a continuation of ``prompt``."""
        return await run_async(self._score(prompt, values))

    def score_sync(self, prompt: str, values: list[str] | str) -> ScoringResult:
        return run_sync(self._score(prompt, values))

    async def model_info(self) -> dict[str, Any]:
        return await run_async(self.client.model_info(self.model_id.served_name))

    def model_info_sync(self) -> dict[str, Any]:
        return run_sync(self.client.model_info(self.model_id.served_name))
