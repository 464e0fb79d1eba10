"""The ``local:`` transport: an LMTP client talking to a session in this process, minus the socket.

It sits above both halves of ``lmtp``: the client's stream routing (``client.transport``) and the
server's session (``server.session``) over models loaded here (``model_host``).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from lmql_core.lmtp.client.loop import client_loop, on_shutdown
from lmql_core.lmtp.client.transport import LMTPClient
from lmql_core.lmtp.server.session import Session
from lmql_core.loading.model_host import ModelHost, load_model


class InProcessClient(LMTPClient):
    """The ``local:`` transport: a session on the engine, minus the socket."""

    cancels = True  # our own session, which always handles CANCEL

    _loaded: ClassVar[dict[str, InProcessClient]] = {}

    def __init__(self, host: Any) -> None:
        super().__init__()
        self.host = host
        self.session = Session(host, self._dispatch)

    @classmethod
    def for_model(cls, model_id: Any, **loader_kwargs: Any) -> InProcessClient:
        """Load the model once per process and set of loader arguments."""
        key = f"{model_id.served_name}|{sorted(loader_kwargs.items())!r}"
        if key not in cls._loaded:
            cls._loaded[key] = asyncio.run_coroutine_threadsafe(
                _load_in_process(cls, model_id, loader_kwargs), client_loop()
            ).result()
        return cls._loaded[key]

    async def _send(self, command: str, payload: dict[str, Any]) -> None:
        await self.session.handle(command, payload)

    async def close(self) -> None:
        """Stop the engines and wait for their threads: an engine thread still inside a native
        step when the interpreter finalizes is killed by unwinding its C++ frames, which aborts
        the process (``terminate called without an active exception``) after a correct run.
        Blocking this loop is fine at exit, and a worker thread is not: by now the executors
        refuse new work."""
        self.session.close()
        self.host.close()


async def _load_in_process(cls: type[InProcessClient], model_id: Any, kwargs: dict[str, Any]) -> Any:
    host = ModelHost()
    host.add(await asyncio.to_thread(load_model, model_id, **kwargs))
    client = cls(host)
    on_shutdown(client.close)
    return client
