"""The engine's idle hook (``Backend.idle``): while no request is in flight the engine's thread
runs a backend's deferred work (the HF backend's CUDA graph captures), a piece a call, with its
lock released so that requests queue meanwhile, waiting as long as the backend asks between
pieces, never during a step, and no more once the backend says nothing is left."""

from __future__ import annotations

import threading
import time
from typing import Any

from lmql_core.builtin.random_backend import RandomBackend
from lmql_core.engine.engine import Engine
from lmql_core.engine.sequence import Finish, SamplingParams, Sequence


class IdleWork(RandomBackend):
    """A backend with deferred work: ``pieces`` pieces of ``piece_s`` seconds each, done only
    through ``Backend.idle``; it records whether a step was in flight during one."""

    def __init__(self, pieces: int, piece_s: float, pause_s: float = 0.0) -> None:
        super().__init__(vocab_size=64, eos_token_id=1)
        self.left, self.piece_s, self.pause_s = pieces, piece_s, pause_s
        self.calls: list[float] = []
        self.stepping = threading.Event()
        self.overlapped = False

    def idle(self) -> float | None:
        self.calls.append(time.perf_counter())
        if self.stepping.is_set():
            self.overlapped = True
        if self.left == 0:
            return None
        time.sleep(self.piece_s)
        self.left -= 1
        return self.pause_s if self.left else None

    def forward(self, batch: Any) -> Any:
        self.stepping.set()
        try:
            return super().forward(batch)
        finally:
            self.stepping.clear()


def run_one(engine: Engine, seq_id: int, tokens: int = 3) -> list[Finish]:
    done: list[Finish] = []
    finished = threading.Event()

    def sink(events: list[Any]) -> None:
        done.extend(e.finish_reason for e in events if e.finish_reason is not None)
        if done:
            finished.set()

    engine.submit(Sequence(seq_id, [2, 3], SamplingParams(max_tokens=tokens), sink))
    assert finished.wait(10)
    return done


def wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert condition()


def test_an_idle_engine_does_the_backends_deferred_work_piece_by_piece_then_stops_asking() -> None:
    backend = IdleWork(pieces=5, piece_s=0.001)
    engine = Engine(backend)
    try:
        wait_until(lambda: backend.left == 0)
        time.sleep(0.05)
        assert len(backend.calls) == 5  # the fifth piece returned None: never asked again
        assert run_one(engine, 1) != []
        time.sleep(0.05)
        assert len(backend.calls) == 5
    finally:
        engine.stop()


def test_the_pause_the_backend_asks_for_is_kept_between_pieces() -> None:
    backend = IdleWork(pieces=3, piece_s=0.0, pause_s=0.1)
    engine = Engine(backend)
    try:
        wait_until(lambda: backend.left == 0)
        gaps = [b - a for a, b in zip(backend.calls, backend.calls[1:], strict=False)]
        assert len(gaps) == 2 and min(gaps) >= 0.09
    finally:
        engine.stop()


def test_requests_arriving_during_idle_work_are_served_and_steps_never_overlap_it() -> None:
    backend = IdleWork(pieces=300, piece_s=0.01)  # 3 s of deferred work
    engine = Engine(backend)
    try:
        wait_until(lambda: len(backend.calls) >= 2)
        began = time.perf_counter()
        assert run_one(engine, 1, tokens=5) != []
        # served after at most the piece in progress, not after all the deferred work
        assert time.perf_counter() - began < 2.0  # (all of it would take 3 s)
        assert backend.left > 0
        assert not backend.overlapped
        left = backend.left
        wait_until(lambda: backend.left < left)  # and the deferred work goes on afterwards
    finally:
        engine.stop()


def test_a_failing_idle_hook_is_not_called_again_and_the_engine_serves_on() -> None:
    class Failing(RandomBackend):
        calls = 0

        def idle(self) -> float | None:
            Failing.calls += 1
            raise RuntimeError("broken idle work")

    engine = Engine(Failing(vocab_size=64, eos_token_id=1))
    try:
        wait_until(lambda: Failing.calls == 1)
        assert run_one(engine, 1) != []
        time.sleep(0.05)
        assert Failing.calls == 1
    finally:
        engine.stop()


def test_an_engine_without_idle_work_never_calls_the_hook_and_serves() -> None:
    backend = IdleWork(pieces=5, piece_s=0.001)
    engine = Engine(backend, idle_work=False)
    try:
        time.sleep(0.1)
        assert run_one(engine, 1) != []
        time.sleep(0.05)
        assert backend.calls == [] and backend.left == 5
    finally:
        engine.stop()


def test_a_model_in_the_users_process_does_no_idle_work_and_a_served_one_does() -> None:
    """``local:`` models run beside the user's own code: their engines skip the backend's idle
    work (the HF backend's CUDA graph captures, which the user's CUDA work in the same process
    could break, and which would break it); a server's engine does it."""
    import asyncio

    from lmql_core.lmtp.local import InProcessClient
    from lmql_core.loading.identifiers import parse_model_id
    from lmql_core.loading.model_host import load_model

    model_id = parse_model_id("local:random")
    client = InProcessClient.for_model(model_id, silent=True, engine_options={"max_batch": 4})
    asyncio.run(client._ensure_open())
    try:
        assert client.host is not None
        [loaded] = client.host.models.values()
        assert loaded.engine.idle_work is False and loaded.engine.scheduler.max_batch == 4
    finally:
        asyncio.run(client.close())
    served = load_model(model_id)
    try:
        assert served.engine.idle_work is True
    finally:
        served.engine.stop()
