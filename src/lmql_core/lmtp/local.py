"""The ``local:`` transport: an LMTP client talking to a session in this process, minus the socket.

It sits above both halves of ``lmtp``: the client's stream routing (``client.transport``) and the
server's session (``server.session``) over models loaded here (``model_host``). As in LMQL 0.7.3
(``LMTPDcModel.ensure_connected``), the model loads on first use, not at ``lmql.model(...)``: a
file of queries imports without loading anything, and a model that cannot load says so when a
query first asks it something.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from lmql_core.lmtp.client.loop import on_shutdown
from lmql_core.lmtp.client.transport import LMTPClient
from lmql_core.lmtp.server.session import Session
from lmql_core.loading.model_host import ModelHost, load_model


class InProcessClient(LMTPClient):
    """The ``local:`` transport: a session on the engine, minus the socket. Made with a
    ``host`` it serves that host's models; made by ``for_model`` it loads its model first."""

    cancels = True  # our own session, which always handles CANCEL

    _loaded: ClassVar[dict[str, InProcessClient]] = {}

    def __init__(self, host: ModelHost | None = None, load: Callable[[], ModelHost] | None = None) -> None:
        super().__init__()
        self.host = host
        self.session = Session(host, self._dispatch) if host is not None else None
        self._load = load
        self._loading: asyncio.Future[None] | None = None

    @classmethod
    def for_model(cls, model_id: Any, *, silent: bool = False, **loader_kwargs: Any) -> InProcessClient:
        """One client per process and set of loader arguments; its model loads on first use
        (``silent``: without printing what loading prints)."""
        key = f"{model_id.served_name}|{sorted(loader_kwargs.items())!r}"
        if key not in cls._loaded:
            cls._loaded[key] = cls(load=lambda: _load_host(model_id, loader_kwargs, silent))
        return cls._loaded[key]

    async def _ensure_open(self) -> None:
        """Load the model if this is the first use: once, whoever asks first, on a worker thread
        (loading on the client loop would stall every other model's streams). A load that fails
        fails each request that waited for it; the next request tries again."""
        if self.session is not None:
            return
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load_now())
            self._loading.add_done_callback(self._forget_failed_load)
        await asyncio.shield(self._loading)  # a cancelled request leaves the load to the others

    def _forget_failed_load(self, loading: asyncio.Future[None]) -> None:
        if loading.cancelled() or loading.exception() is not None:
            self._loading = None

    async def _load_now(self) -> None:
        assert self._load is not None, "an InProcessClient made with a host has nothing to load"
        host = await asyncio.to_thread(self._load)
        self.host, self.session = host, Session(host, self._dispatch)
        on_shutdown(self.close)

    async def _send(self, command: str, payload: dict[str, Any]) -> None:
        assert self.session is not None, "requests open the client first"
        await self.session.handle(command, payload)

    async def close(self) -> None:
        """Stop the engines and wait for their threads: an engine thread still inside a native
        step when the interpreter finalizes is killed by unwinding its C++ frames, which aborts
        the process (``terminate called without an active exception``) after a correct run.
        Blocking this loop is fine at exit, and a worker thread is not: by now the executors
        refuse new work."""
        if self.session is not None and self.host is not None:
            self.session.close()
            self.host.close()


def _load_host(model_id: Any, loader_kwargs: dict[str, Any], silent: bool) -> ModelHost:
    """Runs on a worker thread. The engine does no idle work here: the HF backend's is capturing
    CUDA graphs, and a capture beside the user's own CUDA work in this process fails both (a
    device-wide synchronize is refused while any stream captures); the graphs captured before
    the model is ready serve every batch (a batch size's own graph or its cover)."""
    host = ModelHost()
    engine_options = {"idle_work": False, **(loader_kwargs.get("engine_options") or {})}
    with quiet_thread(silent):
        host.add(load_model(model_id, **{**loader_kwargs, "engine_options": engine_options}))
    return host


# Every muting stream ever installed as sys.stdout or sys.stderr, kept: CPython 3.11's print()
# holds sys.stdout by a borrowed reference, so freeing a stream that another thread is printing to
# when the loading thread puts the old one back crashes that thread (a use-after-free, seen as a
# segfault in CI). Two small objects per silent load.
_INSTALLED: list[_ThreadMuted] = []


class _ThreadMuted:
    """A stand-in for ``sys.stdout`` or ``sys.stderr`` that drops what one thread writes (the one
    loading a model) and passes on the rest: other threads keep printing meanwhile."""

    def __init__(self, stream: Any, muted: int) -> None:
        self._stream = stream
        self._muted: int | None = muted

    def write(self, text: str) -> int:
        return len(text) if threading.get_ident() == self._muted else self._stream.write(text)

    def unmute(self) -> None:
        self._muted = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_thread(silent: bool) -> Iterator[None]:
    """``silent=True`` (LMQL's model option): what this thread prints is not shown."""
    if not silent:
        yield
        return
    muted = {name: _ThreadMuted(getattr(sys, name), threading.get_ident()) for name in ("stdout", "stderr")}
    _INSTALLED.extend(muted.values())
    for name, stream in muted.items():
        setattr(sys, name, stream)
    try:
        yield
    finally:
        for name, stream in muted.items():
            stream.unmute()  # still in use where someone replaced sys.stdout since (theirs stays)
            if getattr(sys, name) is stream:
                setattr(sys, name, stream._stream)
