"""`lmql.serve`: bind a socket, load the model, run the LMTP server (``lmtp.server.app``) until stopped.

``serve`` blocks (until SIGTERM or Ctrl-C) or, with ``background=True``, returns a
``RunningServer`` at once: serving on its own thread and event loop, stopped by ``stop()`` or
the end of a ``with`` block. Both work from any thread and inside a running event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from rich.console import Console

from lmql_core.base.options import format_kwargs
from lmql_core.errors import LMQLError
from lmql_core.lmtp.limits import DEFAULT_HOST, DEFAULT_MODEL, DEFAULT_PORT, Limits
from lmql_core.lmtp.server import gc_pauses
from lmql_core.lmtp.server.app import FRONTEND_SECRET_KEY, GUARD_KEY, make_app, shut_down
from lmql_core.lmtp.server.guard import GuardedSockSite
from lmql_core.loading import plugin_manager
from lmql_core.loading.identifiers import ModelId, parse_model_id
from lmql_core.loading.model_host import ModelHost, load_model
from lmql_core.openai_compat import http as openai_http
from lmql_core.serving.frontends import Frontends, loopback_url

LOOPBACK = {"localhost", "127.0.0.1", "::1"}
# The engine thread and the event loop take turns for the interpreter's lock several times a
# step; at Python's default of 5 ms a turn can outlast a whole decode step (measured on an H100,
# 64 streams: 15.2k tok/s at 5 ms, 17.7k at 50 us; benchmarks/gpu_variants.sh).
GIL_SWITCH_INTERVAL_S = 50e-6
LISTEN_BACKLOG = 128
MAX_PORT = 65535
console = Console(stderr=True, soft_wrap=True)


def serve(model: str = DEFAULT_MODEL, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          cuda: bool = False, dtype: str | None = None, backend: str | None = None,
          load_on_demand: bool = False, limits: Limits | None = None,
          auth_token: str | None = None, background: bool = False, openai: bool = True,
          openai_processes: int = 0, **loader_kwargs: Any) -> RunningServer | None:
    """Load ``model`` and serve it over LMTP on ``ws://host:port/`` and (``openai``) OpenAI's
    HTTP API on ``http://host:port/v1``.

    The port is taken before the model loads, so a busy port fails at once. Blocks until
    SIGTERM or Ctrl-C (KeyboardInterrupt); with ``background=True`` returns a ``RunningServer``
    once it serves (``.endpoint``, ``.stop()``, usable as a context manager). ``port=0`` picks a
    free port. ``auth_token`` (or ``LMQL_AUTH_TOKEN``) makes the server refuse connections
    without it. ``openai_processes``: serve OpenAI's API from that many processes of its own
    (``serving/frontends.py``; 0: on the server's event loop). The server's limits come as
    ``limits`` or by name (``max_streams_per_connection=8``, the fields of ``lmtp.limits.Limits``);
    other keywords go to the backend's loader.
    """
    limits = Limits.taken_from(loader_kwargs, limits)
    auth_token = auth_token or os.environ.get("LMQL_AUTH_TOKEN", "")
    if not auth_token and host not in LOOPBACK:
        console.print(f"[yellow]Warning:[/] serving on {host} without --auth-token: anyone who can "
                      "reach this port can use the model")
    model_id = parse_model_id(model, backend)
    options = plugin_manager.backend_for_name(model_id.backend).options  # fail before announcing anything
    loader_kwargs, engine_options = options.check_and_split(loader_kwargs)
    listeners = bind(host, port)
    try:
        models, description = _load(model_id, cuda, dtype, backend, load_on_demand, loader_kwargs,
                                    engine_options)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    if openai_processes and not openai:
        raise LMQLError("--openai-processes serves OpenAI's API: leave out --no-openai")
    server = RunningServer(models, listeners, host, limits, auth_token, description, openai, openai_processes)
    if background:  # leaves the interpreter's settings alone: the process is the caller's
        return server.start(how_to_stop="server.stop() or leaving its with-block stops it")
    _tune_process_for_serving()
    in_main_thread = threading.current_thread() is threading.main_thread()
    try:
        if in_main_thread and not _loop_running():
            asyncio.run(server.run(stop_on_signals=True))
            return None
        _serve_until_interrupted(server, "Ctrl-C (KeyboardInterrupt) stops it" if in_main_thread else
                                 "it serves until this process ends (background=True gives a handle to stop)")
        return None  # it served inside a running event loop (a notebook), or on a thread
    finally:
        gc_pauses.unfreeze()


def _serve_until_interrupted(server: RunningServer, how_to_stop: str) -> None:
    """Ctrl-C stops it: a KeyboardInterrupt, or ``asyncio.run`` cancelling the task we block;
    also one that comes while the server is starting (it is stopped, not left serving)."""
    task = asyncio.current_task() if _loop_running() else None
    cancelling = getattr(task, "cancelling", lambda: 0)  # Python 3.11+
    try:
        server.start(how_to_stop=how_to_stop)
        server.wait(until=lambda: cancelling() > 0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` (IPv4 and IPv6 for localhost), all on one
    port (``port=0``: a free one); a port in use is an error that says what to do. They listen
    only once the server serves: until then connections are refused, not left waiting."""
    if not 0 <= port <= MAX_PORT:
        raise LMQLError(f"port {port} is out of range: use 1-{MAX_PORT}, or 0 for a free one")
    listeners: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, _, _, _, address in dict.fromkeys(infos):
            listener = _bound(family, (address[0], port, *address[2:]))
            if listener is not None:
                listeners.append(listener)
                port = port or listener.getsockname()[1]
    except OSError as error:
        for listener in listeners:
            listener.close()
        raise _cannot_listen(error, host, port) from None
    if not listeners:
        raise LMQLError(f"cannot listen on {host}:{port}: no usable address")
    return listeners


class PortInUse(LMQLError):
    """The port is taken; the text says what to pass in Python, ``command_line()`` in the CLI."""

    def __init__(self, host: str, port: int, retry_with: str = "port=") -> None:
        self.host, self.port = host, port
        super().__init__(f"port {port} on {host} is in use (another server?): stop that one or "
                         f"pass another {retry_with}N (0 picks a free one)")

    def command_line(self) -> PortInUse:
        return PortInUse(self.host, self.port, retry_with="--port ")


def _cannot_listen(error: OSError, host: str, port: int) -> LMQLError:
    if error.errno == errno.EADDRINUSE:
        return PortInUse(host, port)
    return LMQLError(f"cannot listen on {host}:{port}: {error.strerror or error}")


def _bound(family: int, address: tuple[Any, ...]) -> socket.socket | None:
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRNOTAVAIL:  # that family is not enabled here (as asyncio does)
            return None
        raise
    listener.setblocking(False)
    return listener


def _load(model_id: ModelId, cuda: bool, dtype: str | None, backend: str | None,
          load_on_demand: bool, loader_kwargs: dict[str, Any],
          engine_options: dict[str, Any]) -> tuple[ModelHost, str]:
    where = "CUDA" if cuda else "CPU"
    args = format_kwargs({**loader_kwargs, **engine_options}.items())  # a backend's engine option is in both
    console.print(f"[bold]Loading[/] {model_id.served_name} with backend '{model_id.backend}' "
                  f"on {where}{f' ({args})' if args else ''}")
    began = time.monotonic()
    with console.status(f"Loading {model_id.served_name}..."):
        loaded = load_model(model_id, cuda=cuda, dtype=dtype, engine_options=engine_options, **loader_kwargs)
    models = ModelHost(load_on_demand=load_on_demand, default_backend=backend)
    models.add(loaded)
    info = loaded.info()
    devices = info.get("devices") or [where]
    devices_text = ", ".join(map(str, devices)) if isinstance(devices, list) else str(devices)
    dtype_text = f", {info['dtype']}" if info.get("dtype") else ""
    took = time.monotonic() - began
    return models, f"{model_id.served_name} on {devices_text}{dtype_text} (loaded in {took:.1f} s)"


def _tune_process_for_serving() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc_pauses.freeze_loaded_objects()
    gc_pauses.PAUSES.install()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class RunningServer:
    """A server that serves until ``stop()``; ``serve(..., background=True)`` returns one.

    ``endpoint`` is what clients pass (``lmql.model(name, endpoint=server.endpoint)``).
    """

    def __init__(self, models: ModelHost, listeners: list[socket.socket], host: str,
                 limits: Limits | None, auth_token: str, description: str, openai: bool = True,
                 openai_processes: int = 0) -> None:
        self.models = models
        self.listeners = listeners
        self.host = host
        self.port: int = listeners[0].getsockname()[1]
        self.endpoint = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.limits = limits
        self.auth_token = auth_token
        self.description = description
        self.openai = openai
        self.openai_processes = openai_processes
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._serving = threading.Event()
        self._failure: BaseException | None = None

    async def run(self, stop_on_signals: bool = False,
                  how_to_stop: str = "Ctrl-C or SIGTERM stops it") -> None:
        """Serve on the running loop until ``stop()`` (or SIGINT/SIGTERM when asked)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if stop_on_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._on_signal)
        try:
            await run_server(self.models, self.listeners, self.limits, self.auth_token, openai=self.openai,
                             openai_processes=self.openai_processes, stop=self._stop,
                             on_serving=lambda: self._announce(how_to_stop))
        except OSError as error:  # listen() lost a race for the port since bind()
            if self._serving.is_set():
                raise
            raise _cannot_listen(error, self.host, self.port) from None

    def _on_signal(self) -> None:
        """Stop. Shutdown is then under way and bounded by its grace period: a second SIGTERM (a
        supervisor repeating itself) must not turn the clean exit into a kill, even during the
        final teardown, so SIGTERM is ignored from here on (this runs on the main thread)."""
        assert self._loop is not None and self._stop is not None
        self._stop.set()
        self._loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _announce(self, how_to_stop: str) -> None:
        processes = f" ({self.openai_processes} processes)" if self.openai_processes else ""
        openai = f" and OpenAI's API on [bold]http://{self.endpoint}/v1[/]{processes}" if self.openai else ""
        console.print(f"[green]Ready:[/] {self.description}, serving LMTP on "
                      f"[bold]ws://{self.endpoint}/[/]{openai}; {how_to_stop}")
        self._serving.set()

    def start(self, how_to_stop: str) -> RunningServer:
        """Serve on a thread of its own; returns once the socket serves."""
        self._thread = threading.Thread(target=self._run_in_thread, args=(how_to_stop,),
                                        name=f"lmql-serve-{self.port}", daemon=True)
        self._thread.start()
        while not self._serving.wait(0.1):
            if not self._thread.is_alive():
                raise LMQLError(f"the server on {self.endpoint} did not start: {self._failure}")
        return self

    def _run_in_thread(self, how_to_stop: str) -> None:
        try:
            asyncio.run(self.run(how_to_stop=how_to_stop))
        except BaseException as error:  # told by start() when it happens before serving
            self._failure = error
            if self._serving.is_set():
                raise
            for listener in self.listeners:
                listener.close()

    def stop(self, timeout: float = 30) -> None:
        """End open streams, close the connections and the socket; returns once done (also
        when called while the server's thread is still starting)."""
        deadline = time.monotonic() + timeout
        while (self._stop is None and self._thread is not None and self._thread.is_alive()
               and time.monotonic() < deadline):
            self._serving.wait(0.05)  # its loop and stop event are being made
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def wait(self, until: Callable[[], bool] = lambda: False) -> None:
        """Block until the server stops or ``until()`` (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive() and not until():
            self._thread.join(0.2)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def run_server(models: ModelHost, listeners: list[socket.socket],
                     limits: Limits | None = None, auth_token: str = "", *, openai: bool = True,
                     openai_processes: int = 0, stop: asyncio.Event, on_serving: Callable[[], None]) -> None:
    limits = limits or Limits()
    app = make_app(models, limits, auth_token)
    if openai:
        openai_http.add_routes(app)
    frontends = Frontends(openai_processes, limits, auth_token) if openai_processes else None
    if frontends is not None:
        app[FRONTEND_SECRET_KEY] = frontends.secret
        app[GUARD_KEY].hand_over = frontends
    # shut_down has ended every connection before the runner's cleanup waits on them
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        for listener in listeners:
            await GuardedSockSite(runner, listener, app[GUARD_KEY], backlog=LISTEN_BACKLOG).start()
        if frontends is not None:
            await frontends.start(loopback_url(listeners[0]), list(models.models))
        on_serving()
        await stop.wait()
        console.print(f"Shutting down: ending open streams (at most {limits.shutdown_grace_s:g} s)")
        await shut_down(app, limits.shutdown_grace_s)  # in-flight streams get an error entry
    finally:
        if frontends is not None:  # (they answer what they hold, then exit)
            await asyncio.to_thread(frontends.stop)
        await runner.cleanup()
