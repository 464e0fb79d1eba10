"""The engine and the HF backend together, under mixed traffic, against transformers: prompts
of many lengths fed in chunks of small token budgets, SCOREs among them, several clients with a
batch small enough that the fair share preempts (recomputes) running sequences, arrivals while
others decode. Every stream's greedy tokens must be transformers' own and every SCORE's
log-probs its forward's, whatever the engine did to schedule them."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

from lmql_core.engine.engine import Engine  # noqa: E402
from lmql_core.engine.sequence import Kind, SamplingParams, Sequence, TokenEvent  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402

pytestmark = pytest.mark.hf
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def reference() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(bundled_path("lmql-tiny")).eval()


def greedy(model: Any, prompt: list[int], banned: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             suppress_tokens=[banned], pad_token_id=0)
    return out[0, len(prompt):].tolist()


def logprobs(model: Any, prompt: list[int], scored: list[int]) -> list[float]:
    with torch.no_grad():
        rows = torch.log_softmax(model(torch.tensor([prompt + scored])).logits[0].double(), -1)
    return [rows[len(prompt) - 1 + i, t].item() for i, t in enumerate(scored)]


class Client:
    """A sink: collects its streams' events and says when all of them ended."""

    def __init__(self, streams: int) -> None:
        self.events: dict[Any, list[TokenEvent]] = {}
        self.left = streams
        self.done = threading.Event()

    def __call__(self, events: list[TokenEvent]) -> None:
        for event in events:
            self.events.setdefault(event.stream_id, []).append(event)
            if event.finish_reason is not None or event.error:
                self.left -= 1
        if self.left == 0:
            self.done.set()


class Traffic:
    """Random requests, each with its expected result from the reference."""

    def __init__(self, model: Any, seed: int, shared: bool = False) -> None:
        self.model, self.rng = model, random.Random(seed)
        self.vocab, self.eos = model.config.vocab_size, model.config.eos_token_id
        self.expected: dict[Any, tuple[str, list]] = {}
        # with ``shared``, prompts start with the start of one of a few texts, as LMQL's growing
        # prompts do: finished streams' caches serve them as prefixes
        self.texts = [self._tokens(150) for _ in range(3)] if shared else []

    def _tokens(self, count: int) -> list[int]:
        return [self.rng.randrange(3, self.vocab) for _ in range(count)]

    def _prompt(self) -> list[int]:
        length = self.rng.choice([1, 5, 30, 70, 150])
        if not self.texts:
            return self._tokens(length)
        start = self.rng.choice(self.texts)[: self.rng.randint(1, 150)]
        return (start + self._tokens(length))[: max(length, len(start))]

    def client(self, name: str, streams: int) -> tuple[Client, list[Sequence]]:
        """A client's streams: prompts of 1 to 300 tokens, every fourth a SCORE."""
        client, requests = Client(streams), []
        for s in range(streams):
            stream, prompt = (name, s), self._prompt()
            if s % 4 == 3:
                scored = self._tokens(self.rng.randint(1, 8))
                requests.append(Sequence(stream, prompt, SamplingParams(max_tokens=0), client,
                                         kind=Kind.SCORE, scored=scored))
                self.expected[stream] = ("score", logprobs(self.model, prompt, scored))
            else:
                params = SamplingParams(max_tokens=NEW_TOKENS, logit_bias={self.eos: -100.0})
                requests.append(Sequence(stream, prompt, params, client))
                self.expected[stream] = ("tokens", greedy(self.model, prompt, self.eos))
        return client, requests

    def check(self, client: Client, timeout: float = 120) -> None:
        assert client.done.wait(timeout), "streams did not end"
        for stream, events in client.events.items():
            kind, want = self.expected[stream]
            assert all(e.error is None for e in events), (stream, events[-1].error)
            if kind == "tokens":
                assert [e.token for e in events] == want, stream
            else:
                assert [e.logprob for e in events] == pytest.approx(want, abs=1e-4), stream


@pytest.mark.parametrize(("token_budget", "max_batch", "shared"),
                         [(24, 3, False), (64, 8, False), (8192, 64, False), (24, 3, True), (8192, 64, True)])
def test_mixed_traffic_gives_transformers_tokens_and_log_probs(reference: Any, token_budget: int,
                                                                max_batch: int, shared: bool) -> None:
    """One client fills the batch and more; two others arrive once it decodes and take their
    shares (the first's newest streams preempted, where the batch is small). With ``shared``
    prompts, cached prefixes serve them."""
    traffic = Traffic(reference, token_budget, shared)
    engine = Engine(HFBackend(str(bundled_path("lmql-tiny"))), token_budget=token_budget, max_batch=max_batch)
    try:
        first = traffic.client("first", min(max_batch + 2, 10))
        later = [traffic.client(name, 3) for name in ("second", "third")]
        for seq in first[1]:
            engine.submit(seq)
        while not first[0].events and not first[0].done.is_set():
            first[0].done.wait(0.001)
        for _, requests in later:
            for seq in requests:
                engine.submit(seq)
        for client, _ in [first, *later]:
            traffic.check(client)
        assert engine.stats.sequences_preempted > 0 or max_batch > 3  # (with 8: as arrivals fall)
        assert engine.backend.table.reused_tokens > 0 or not shared
    finally:
        engine.stop()


def test_more_clients_than_the_batch_holds_all_get_their_answers(reference: Any) -> None:
    """Five clients at once on an idle engine with a batch of two: each waits its turn."""
    traffic = Traffic(reference, 5)
    engine = Engine(HFBackend(str(bundled_path("lmql-tiny"))), max_batch=2)
    try:
        clients = [traffic.client(f"client {i}", 2) for i in range(5)]
        for _, requests in clients:
            for seq in requests:
                engine.submit(seq)
        for client, _ in clients:
            traffic.check(client)
    finally:
        engine.stop()
