"""Running an LMTP server: load the model, bind, serve until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from aiohttp import web
from rich.console import Console

from lmql_core import plugins
from lmql_core.identifiers import format_kwargs, parse_model_id
from lmql_core.lmtp import gc_pauses, protocol
from lmql_core.lmtp.guard import GuardedSite
from lmql_core.lmtp.server import GUARD_KEY, make_app, shut_down
from lmql_core.serving import ModelHost, load_model

DEFAULT_MODEL = "lmql-tiny"
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
# The engine thread and the event loop take turns for the interpreter's lock several times a
# step; at Python's default of 5 ms a turn can outlast a whole decode step (measured on an H100,
# 64 streams: 15.2k tok/s at 5 ms, 17.7k at 50 us; benchmarks/gpu_variants.sh).
GIL_SWITCH_INTERVAL_S = 50e-6
console = Console(stderr=True, soft_wrap=True)


def serve(model: str = DEFAULT_MODEL, *, host: str = "localhost", port: int = 8080,
          cuda: bool = False, dtype: str | None = None, backend: str | None = None,
          load_on_demand: bool = False, limits: protocol.Limits | None = None,
          auth_token: str | None = None, **loader_kwargs: Any) -> None:
    """Load ``model`` and serve it over LMTP on ``ws://host:port/`` until stopped.

    ``auth_token`` (or ``LMQL_AUTH_TOKEN``) makes the server refuse connections without it.
    """
    auth_token = auth_token or os.environ.get("LMQL_AUTH_TOKEN", "")
    if not auth_token and host not in LOOPBACK:
        console.print(f"[yellow]Warning:[/] serving on {host} without --auth-token: anyone who can "
                      "reach this port can use the model")
    model_id = parse_model_id(model, backend)
    plugins.backend_for_name(model_id.backend)  # fail before announcing anything
    where = "CUDA" if cuda else "CPU"
    args = format_kwargs(loader_kwargs.items())
    console.print(f"[bold]Loading[/] {model_id.served_name} with backend '{model_id.backend}' "
                  f"on {where}{f' ({args})' if args else ''}")
    with console.status(f"Loading {model_id.served_name}..."):
        loaded = load_model(model_id, cuda=cuda, dtype=dtype, **loader_kwargs)
    models = ModelHost(load_on_demand=load_on_demand, default_backend=backend)
    models.add(loaded)
    info = loaded.info()
    devices = info.get("devices") or [where]
    devices_text = ", ".join(map(str, devices)) if isinstance(devices, list) else str(devices)
    dtype = f", {info['dtype']}" if info.get("dtype") else ""
    console.print(f"[green]Ready:[/] {model_id.served_name} on {devices_text}{dtype}")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc_pauses.freeze_loaded_objects()
    gc_pauses.PAUSES.install()
    asyncio.run(run_server(models, host, port, limits, auth_token))


async def run_server(models: ModelHost, host: str, port: int,
                     limits: protocol.Limits | None = None, auth_token: str = "") -> None:
    limits = limits or protocol.Limits()
    app = make_app(models, limits, auth_token)
    # shut_down has ended every connection before the runner's cleanup waits on them
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = GuardedSite(runner, host, port, app[GUARD_KEY])
    await site.start()
    for bound_host, bound_port in runner.addresses[:1]:
        console.print(f"Serving LMTP on [bold]ws://{host}:{bound_port}/[/] ({bound_host})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Shutdown is under way and bounded by its grace period: a second SIGTERM (a supervisor
    # repeating itself) must not turn the clean exit into a kill, even during the final teardown.
    loop.remove_signal_handler(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    console.print(f"Shutting down: ending open streams (at most {limits.shutdown_grace_s:g} s)")
    await shut_down(app, limits.shutdown_grace_s)  # in-flight streams get an error entry
    await runner.cleanup()
