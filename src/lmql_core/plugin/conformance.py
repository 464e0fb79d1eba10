"""A conformance suite for backends, for a plugin's own tests (``lmql_core.plugin.check_backend``).

The backend is loaded as the server loads it and driven through the real engine and an LMTP
session in this process (no socket): greedy generation, batching, scoring, release and
cancellation, and per-row errors where the caller says how to trigger one. A failure raises
``ConformanceError`` (an ``AssertionError``) whose message starts with the check that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmql_core.errors import LMQLError, ServerError, TokenizerNotFound
from lmql_core.lmtp.client.loop import run_sync
from lmql_core.lmtp.local import InProcessClient
from lmql_core.lmtp.wire import LENGTH, LOWEST_LOGPROB, STOP
from lmql_core.loading import plugin_manager
from lmql_core.loading.identifiers import ModelId
from lmql_core.loading.model_host import LoadedModel, ModelHost, load_with

PROMPTS = 4  # streams in the batching check
PROMPT_LENGTH = 4
MAX_TOKENS = 6
RELEASE_WAIT_S = 10.0  # how long the engine may take to release sequences that ended
BACKEND_NAME = "conformance"
# decoded back exactly by byte-level and most other tokenizers
TOKENIZER_TEXTS = ("Hello, world!", "The quick brown fox jumps over 13 lazy dogs.",
                   " leading and  double spaces", "line\nbreak\ttab", "naïve café")
Entries = list[dict[str, Any]]


class ConformanceError(AssertionError):
    """A backend broke the contract: the message names the check and what went wrong."""


def check_backend(factory: Callable[..., Any] | str, model: str = "conformance", *, tolerance: float = 1e-3,
                  failing_prompt: list[int] | None = None, tokenizer: Callable[..., Any] | None = None,
                  **loader_kwargs: Any) -> dict[str, str]:
    """Load ``factory(model, cuda=False, dtype=None, **loader_kwargs)`` the way the server does and
    check it; returns each check's outcome ("passed" or "skipped: why"). ``factory`` may be the
    name of an installed backend: its registered factory and tokenizer are checked. ``tolerance``:
    how far a SCORE logprob may be from the greedy step's for the same token (prefill vs decode
    numerics). ``failing_prompt``: token ids the backend rejects on its own (``StepOutput.errors``),
    to check that only that stream fails; the per-row check is skipped without it. ``tokenizer``:
    the function given to ``register(..., tokenizer=)``; it and the backend's ``tokenizer_json()``
    must give texts back, ids below ``vocab_size`` and the backend's BOS and EOS."""
    if isinstance(factory, str):
        spec = plugin_manager.backend_for_name(factory)
        factory, tokenizer = spec.factory, tokenizer or spec.tokenizer
    observer = Observer()
    make = factory

    def observed(*args: Any, **kwargs: Any) -> Any:
        return observer.attach(make(*args, **kwargs))

    loaded = _load(observed, model, tokenizer, loader_kwargs)
    host = ModelHost()
    host.add(loaded)
    try:
        outcome = run_sync(_Suite(loaded, host, observer, tolerance).run(failing_prompt))
        outcome["tokenizer"] = check_tokenizers(loaded)
        return outcome
    finally:
        host.close()


def _load(factory: Callable[..., Any], model: str, tokenizer: Callable[..., Any] | None,
          loader_kwargs: dict[str, Any]) -> LoadedModel:
    try:
        return load_with(factory, ModelId(model, BACKEND_NAME), tokenizer_loader=tokenizer, **loader_kwargs)
    except LMQLError as error:
        raise ConformanceError(f"contract: {error}") from error


@dataclass
class Observer:
    """Wraps the backend's own ``forward``/``release`` methods to see what the engine asked and
    got back: which sequences ran, which were released, and outputs of the wrong shape."""

    forwarded: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, backend: Any) -> Any:
        forward, release = backend.forward, backend.release
        release_all = getattr(backend, "release_all", None)  # optional (backend.ReleasesTogether)

        def observed_forward(batch: list[Any]) -> Any:
            output = forward(batch)
            with self._lock:
                self.forwarded.update(item.seq_id for item in batch)
            self._check_output(getattr(backend, "vocab_size", None), batch, output)
            return output

        def observed_release(seq_id: int) -> None:
            with self._lock:
                self.released.add(seq_id)
            release(seq_id)

        def observed_release_all(seq_ids: list[int]) -> None:
            with self._lock:
                self.released.update(seq_ids)
            release_all(seq_ids)  # type: ignore[misc]  # wrapped only where it is set

        backend.forward, backend.release = observed_forward, observed_release
        if release_all is not None:
            backend.release_all = observed_release_all
        return backend

    def _check_output(self, vocab: Any, batch: list[Any], output: Any) -> None:
        shape = tuple(getattr(output.last_logits, "shape", ()))
        if shape != (len(batch), vocab):
            self._problem(f"forward returned last_logits of shape {shape} for {len(batch)} inputs; "
                          f"expected ({len(batch)}, vocab_size={vocab})")
        for item in batch:
            if not item.all_logits or item.seq_id in output.errors:
                continue
            n = len(item.tokens)
            rows = output.all_logits.get(item.seq_id)
            if rows is None:
                self._problem("forward ignored StepInput.all_logits: an input that asked for every "
                              "token's logits (a SCORE) got no StepOutput.all_logits[seq_id]")
            elif tuple(rows.shape) not in {(n, vocab), (n - item.logits_from, vocab)}:
                self._problem(f"forward returned all_logits of shape {tuple(rows.shape)} for "
                              f"{len(item.tokens)} tokens; expected ({len(item.tokens)}, vocab_size={vocab}) "
                              f"or, from StepInput.logits_from={item.logits_from} on, "
                              f"({len(item.tokens) - item.logits_from}, vocab_size={vocab})")

    def _problem(self, message: str) -> None:
        with self._lock:
            if message not in self.problems:
                self.problems.append(message)

    def unreleased(self) -> set[int]:
        with self._lock:
            return self.forwarded - self.released


class _Suite:
    def __init__(self, loaded: LoadedModel, host: ModelHost, observer: Observer, tolerance: float) -> None:
        self.backend = loaded.backend
        self.name = loaded.model_id.served_name
        self.host = host
        self.observer = observer
        self.tolerance = tolerance
        self.vocab: int = loaded.backend.vocab_size
        self.client: InProcessClient

    async def run(self, failing_prompt: list[int] | None) -> dict[str, str]:
        self.client = InProcessClient(self.host)  # its session lives on this (the client) loop
        outcome = {"contract": "passed"}
        prompts = self.prompts()
        alone = await self.check_generate(prompts)
        outcome["generate"] = "passed"
        await self.check_batching(prompts, alone)
        outcome["batching"] = "passed"
        await self.check_score(prompts[0], alone[0])
        outcome["score"] = "passed"
        await self.check_release(prompts[0], alone[0])
        outcome["release"] = "passed"
        if failing_prompt is None:
            outcome["row errors"] = "skipped: no failing_prompt given"
        else:
            await self.check_row_error(failing_prompt, prompts[1], alone[1])
            outcome["row errors"] = "passed"
        return outcome

    def prompts(self) -> list[list[int]]:
        """Small distinct prompts of ids valid for the vocabulary, after BOS when there is one."""
        special = {self.backend.eos_token_id, self.backend.bos_token_id}
        ids = [t for t in range(1, min(self.vocab, 1000)) if t not in special]
        if not ids:
            raise ConformanceError(f"contract: vocab_size={self.vocab} leaves no ordinary token ids")
        bos = [self.backend.bos_token_id] if self.backend.bos_token_id is not None else []
        return [bos + [ids[(3 * i + j) % len(ids)] for j in range(PROMPT_LENGTH)] for i in range(PROMPTS)]

    # the checks

    async def check_generate(self, prompts: list[list[int]]) -> list[Entries]:
        alone = [await self.generate("generate", prompt, MAX_TOKENS) for prompt in prompts]
        for entries in alone:
            self.check_stream("generate", entries, MAX_TOKENS)
        again = await self.generate("generate", prompts[0], MAX_TOKENS)
        self.same("generate", "the same prompt generated twice (greedy)", again, alone[0])
        one = await self.generate("generate", prompts[0], 1)
        self.check_stream("generate", one, 1)
        self.same("generate", "max_tokens=1 against the first token of max_tokens=6", one, alone[0][:1],
                  finish=False)
        return alone

    async def check_batching(self, prompts: list[list[int]], alone: list[Entries]) -> None:
        together = await asyncio.gather(*(self.generate("batching", p, MAX_TOKENS) for p in prompts))
        for i, (got, expected) in enumerate(zip(together, alone, strict=True)):
            what = f"stream {i} of {len(prompts)} concurrent ones against it alone"
            self.same("batching", what, got, expected)

    async def check_score(self, prompt: list[int], greedy: Entries) -> None:
        scored = [e["token"] for e in greedy]
        body = {"model": self.name, "prompt": prompt, "scored": scored}
        entries = await self.stream("score", "SCORE", body)
        self.observed("score")
        if [e.get("token") for e in entries] != scored:
            raise ConformanceError(f"score: SCORE of {len(scored)} tokens {scored} answered tokens "
                                   f"{[e.get('token') for e in entries]}; expected one per scored token")
        for i, (got, expected) in enumerate(zip(entries, greedy, strict=True)):
            self.check_logprob("score", got, i)
            if abs(got["logprob"] - expected["logprob"]) > self.tolerance:
                raise ConformanceError(
                    f"score: scored token {i} ({got['token']}) has logprob {got['logprob']:.6g}, but "
                    f"the greedy step that chose it had {expected['logprob']:.6g} "
                    f"(tolerance {self.tolerance})")

    async def check_release(self, prompt: list[int], expected: Entries) -> None:
        await self.wait_released("release", "after their streams ended")
        stream = self.client.request("GENERATE", self.generate_body(prompt, self.longest(prompt)))
        async with contextlib.aclosing(stream):
            async for _ in stream:
                break  # abandoned after one token: the client sends CANCEL
        await self.wait_released("release", "after a stream was cancelled")
        after = await self.generate("release", prompt, MAX_TOKENS)
        self.same("release", "a stream after a cancelled one against the same stream before", after, expected)

    async def check_row_error(self, failing: list[int], prompt: list[int], expected: Entries) -> None:
        bad, good = await asyncio.gather(self.generate("row errors", failing, MAX_TOKENS),
                                         self.generate("row errors", prompt, MAX_TOKENS),
                                         return_exceptions=True)
        if isinstance(good, BaseException):
            raise ConformanceError(f"row errors: a stream beside the failing one failed too: {good}")
        if not isinstance(bad, BaseException):
            raise ConformanceError(f"row errors: failing_prompt {failing} generated tokens "
                                   f"{[e['token'] for e in bad]} instead of failing on its own")
        self.same("row errors", "a stream beside a failing one against it alone", good, expected)

    # helpers

    def generate_body(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        return {"model": self.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}

    def longest(self, prompt: list[int]) -> int:
        limit = self.backend.max_context
        return max(1, min(256, limit - len(prompt) - 1 if limit is not None else 256))

    async def generate(self, check: str, prompt: list[int], max_tokens: int) -> Entries:
        entries = await self.stream(check, "GENERATE", self.generate_body(prompt, max_tokens))
        self.observed(check)
        return entries

    async def stream(self, check: str, command: str, body: dict[str, Any]) -> Entries:
        try:
            return [e async for e in self.client.request(command, body)]
        except ServerError as error:
            self.observed(check)  # a wrongly shaped output is the clearer message
            raise ConformanceError(f"{check}: {command} of {body['prompt']} failed: {error}") from error

    def observed(self, check: str) -> None:
        if self.observer.problems:
            raise ConformanceError(f"{check}: {'; '.join(self.observer.problems)}")

    def check_stream(self, check: str, entries: Entries, max_tokens: int) -> None:
        tokens = [e["token"] for e in entries]
        reasons = [e.get("finish_reason") for e in entries]
        if not entries or len(entries) > max_tokens:
            raise ConformanceError(f"{check}: max_tokens={max_tokens} gave {len(entries)} tokens {tokens}")
        if any(r is not None for r in reasons[:-1]) or reasons[-1] not in (STOP, LENGTH):
            raise ConformanceError(f"{check}: finish reasons {reasons}: only the last token may have one, "
                                   "'stop' or 'length'")
        if reasons[-1] == LENGTH and len(entries) != max_tokens:
            raise ConformanceError(f"{check}: finish reason 'length' after {len(entries)} of {max_tokens} "
                                   "tokens")
        if reasons[-1] == STOP and tokens[-1] != self.backend.eos_token_id:
            raise ConformanceError(f"{check}: finish reason 'stop' on token {tokens[-1]}, not eos_token_id="
                                   f"{self.backend.eos_token_id}")
        for i, entry in enumerate(entries):
            if not 0 <= entry["token"] < self.vocab:
                raise ConformanceError(f"{check}: token {entry['token']} is outside vocab_size={self.vocab}")
            self.check_logprob(check, entry, i)

    def check_logprob(self, check: str, entry: dict[str, Any], i: int) -> None:
        logprob = entry.get("logprob")
        if not isinstance(logprob, float | int) or not math.isfinite(logprob) or logprob <= LOWEST_LOGPROB \
                or logprob > 1e-4:
            raise ConformanceError(f"{check}: token {i} ({entry.get('token')}) has logprob {logprob!r}; "
                                   "expected a finite log-probability <= 0 (are the logits finite?)")

    def same(self, check: str, what: str, got: Entries, expected: Entries, finish: bool = True) -> None:
        got_tokens, expected_tokens = [e["token"] for e in got], [e["token"] for e in expected]
        if got_tokens != expected_tokens:
            raise ConformanceError(f"{check}: {what}: tokens {got_tokens} != {expected_tokens}")
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if abs(a["logprob"] - b["logprob"]) > self.tolerance:
                raise ConformanceError(f"{check}: {what}: logprob of token {i} {a['logprob']:.6g} != "
                                       f"{b['logprob']:.6g} (tolerance {self.tolerance})")
            if finish and a.get("finish_reason") != b.get("finish_reason"):
                raise ConformanceError(f"{check}: {what}: finish reasons differ at token {i}")

    async def wait_released(self, check: str, when: str) -> None:
        deadline = time.monotonic() + RELEASE_WAIT_S
        while self.observer.unreleased() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        missing = sorted(self.observer.unreleased())
        if missing:
            raise ConformanceError(f"{check}: sequences {missing} were never released {when} (release/"
                                   f"release_all was not called, or the wrapped methods were bypassed)")


def check_tokenizers(loaded: LoadedModel) -> str:
    """"passed", or "skipped: ..." when the backend brings no tokenizer; ConformanceError else."""
    found = [("the registered tokenizer", _registered(loaded.tokenizer_loader, loaded.model_id.model)),
             ("tokenizer_json()", loaded.own_tokenizer())]
    found = [(where, tokenizer) for where, tokenizer in found if tokenizer is not None]
    if not found:
        return "skipped: the backend brings no tokenizer (register(..., tokenizer=) or tokenizer_json())"
    for where, tokenizer in found:
        check_tokenizer(where, tokenizer, loaded.backend)
    return "passed"


def _registered(loader: Callable[..., Any] | None, model: str) -> Any:
    """What ``register(..., tokenizer=)``'s function gives for ``model`` (None: nothing for it)."""
    try:
        return loader(model, tokenizer=None) if loader is not None else None
    except TokenizerNotFound:
        return None


def check_tokenizer(where: str, tokenizer: Any, backend: Any) -> None:
    def fail(problem: str) -> ConformanceError:
        return ConformanceError(f"tokenizer: {where} ({type(tokenizer).__name__}): {problem}")

    for special in ("bos_token_id", "eos_token_id"):
        ours, theirs = getattr(tokenizer, special, None), getattr(backend, special, None)
        if ours != theirs:
            raise fail(f"{special}={ours!r}, but the backend's is {theirs!r}")
    for text in TOKENIZER_TEXTS:
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        outside = [i for i in ids if not 0 <= i < backend.vocab_size]
        if outside:
            raise fail(f"encode({text!r}) gave ids {outside} outside vocab_size={backend.vocab_size}")
        decoded = tokenizer.decode(ids)
        if decoded != text:
            raise fail(f"decode(encode({text!r})) gave {decoded!r}")
