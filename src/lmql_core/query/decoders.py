"""Decoders: how holes get their values. ``argmax`` and ``sample`` generate each variable as the
program reaches it; ``beam`` keeps the n best runs, replaying the program for each (see ``beam``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lmql_core.query.decision import Decide, Decided, RunContext, postprocess
from lmql_core.query.errors import QueryError
from lmql_core.query.generation import generate
from lmql_core.query.output import show
from lmql_core.query.variable import CHUNK, Sampling, Variable

DEFAULT_MAX_LENGTH = 2048  # LMQL's default max_len: prompt and generated tokens together

# Each LMQL 0.7.3 decoder's own arguments (runtime/dclib/decoders.py); "beam" is beam_search.
DECODER_ARGUMENTS = {
    "argmax": ("n", "max_len"),
    "sample": ("temperature", "n", "max_len"),
    "beam": ("n", "max_len"),
    "beam_search": ("n", "max_len"),
    "beam_sample": ("n", "max_len", "temperature"),
    "beam_var": ("n", "max_len", "inject_stop", "prune", "return_first", "alpha"),
    "var": ("b", "n", "max_len", "subdecoder", "temperature", "return_first"),
    "best_k": ("k", "budget", "kappa", "beta", "gamma", "max_heap_size", "top_k_continuations", "max_len"),
}
RUNNABLE = ("argmax", "sample", "beam", "beam_search", "beam_var", "var", "beam_sample", "best_k")
# Sent with each request, as LMQL's LMTP client does (the server decides what it supports).
FORWARDED = ("top_k", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
# What LMQL accepts beside every decoder's own (PromptInterpreter.EXTRA_DECODER_ARGS, less its
# internals). chunksize sizes requests; max_length is max_len; the rest concern OpenAI, logging,
# LMQL's cache and tracing, and change nothing that is generated from a local model.
EXTRA = (*FORWARDED, "chunksize", "max_length", "chunk_timeout", "chatty_openai", "openai_chunksize",
         "openai_nonstop", "distribution_batch_size", "step_budget", "stats", "performance_stats", "cache",
         "show_speculative", "alpha", "verbose", "certificate", "output_writer")


class UnknownDecoderArgument(QueryError, ValueError):  # LMQL raises ValueError
    pass


@dataclass
class DecoderSpec:
    name: str = "argmax"
    n: int = 1
    temperature: float | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    options: dict[str, Any] = field(default_factory=dict)  # FORWARDED ones
    chunk: int = CHUNK
    writer: Any = None  # output_writer=
    extra: dict[str, Any] = field(default_factory=dict)  # the decoder's own arguments, as given
    certificate: Any = None  # certificate= (a call's, or the decoder clause's): see api/certificate.py

    KNOWN = tuple(sorted({a for args in DECODER_ARGUMENTS.values() for a in args} | set(EXTRA)))

    @classmethod
    def build(cls, name: str, kwargs: dict[str, Any],
              model_defaults: dict[str, Any] | None = None) -> DecoderSpec:
        """The decoder ``name`` with LMQL's arguments ``kwargs`` over the model's own decoding
        options (``lmql.model(..., chunksize=, top_k=)``)."""
        if name not in DECODER_ARGUMENTS:
            raise QueryError(f"unknown decoder '{name}'; use one of {', '.join(DECODER_ARGUMENTS)}")
        if name not in RUNNABLE:
            raise QueryError(f"the decoder '{name}' is not supported by lmql-core yet; "
                             "use argmax, sample or beam")
        unknown = sorted(set(kwargs) - cls.accepted(name))  # a temperature makes argmax sample (below)
        if unknown:
            raise UnknownDecoderArgument(f"unknown decoder argument(s) {', '.join(unknown)} for {name}; "
                                         f"it takes {', '.join(DECODER_ARGUMENTS[name])} and LMQL's "
                                         "common ones "
                                         f"({', '.join(EXTRA)})")
        kwargs = {**(model_defaults or {}), **kwargs}
        n = kwargs.get("n", 4 if name in ("beam", "beam_search", "beam_var", "beam_sample") else 1)  # LMQL's
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise QueryError(f"{name}(n=...) must be a positive integer, not {n!r}")
        temperature = kwargs.get("temperature")
        if name == "argmax" and temperature not in (None, 0, 0.0):
            name = "sample"  # as LMQL: a temperature makes argmax sample
        default_length = 384 if name == "var" else DEFAULT_MAX_LENGTH  # LMQL's var(max_len=384)
        max_length = int(kwargs.get("max_len", kwargs.get("max_length", default_length)))
        chunk = kwargs.get("chunksize", CHUNK)
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise QueryError(f"chunksize must be a positive integer, not {chunk!r}")
        return cls("beam" if name == "beam_search" else name, n, temperature, max_length,
                   {k: kwargs[k] for k in FORWARDED if k in kwargs}, chunk, kwargs.get("output_writer"),
                   {k: kwargs[k] for k in DECODER_ARGUMENTS[name] if k in kwargs}, kwargs.get("certificate"))

    @classmethod
    def accepted(cls, name: str) -> set[str]:
        return {*DECODER_ARGUMENTS.get(name, ()), "temperature", *EXTRA}

    @property
    def singular(self) -> bool:
        """Whether one result comes alone rather than in a list (LMQL's ``dc.finish(singular=)``):
        argmax when n is 1, sample always, beam never."""
        return self.name == "sample" or (self.name == "argmax" and self.n == 1)

    @property
    def sampling(self) -> Sampling:
        if self.name == "sample":
            temperature = 1.0 if self.temperature is None else float(self.temperature)
        else:
            temperature = 0.0
        return Sampling(temperature, self.options, self.chunk)


def direct(spec: DecoderSpec) -> Decide:
    """Generate each variable when the program reaches it (shown to ``output_writer`` token by
    token, where there is one)."""
    sampling = spec.sampling

    async def decide(ctx: RunContext, name: str, prompt_ids: list[int], variable: Variable) -> Decided:
        async def on_token(ids: list[int]) -> None:
            text = variable.vocab.decode(ids)
            await show(spec.writer, name, ctx.prompt_text + text, {**ctx.variables, name: text},
                       len(prompt_ids) + len(ids))

        watch = on_token if spec.writer is not None else None
        ids = await generate(ctx.model, prompt_ids, variable, sampling, spec.max_length, watch)
        return finished(name, ids, variable)

    decide.template_spec = spec  # type: ignore[attr-defined]  # its holes may go to the server (template_run)
    return decide


def finished(name: str, ids: list[int], variable: Variable) -> Decided:
    prompt_text, value = postprocess(variable.rule, name, variable.finish(ids))
    return Decided(ids, variable.vocab.decode(ids), prompt_text, value)


def log_softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - total for s in scores]
