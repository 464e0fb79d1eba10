"""OpenAI front-end processes (``--openai-processes N``): the HTTP work of OpenAI's API beside the
engine instead of in turn with it.

The server's process accepts every connection and looks at its first request line: LMTP, /health
and /metrics stay; a connection that asks for OpenAI's API (``/v1/...``, ``/tokenize``,
``/detokenize``) is handed, socket and bytes read so far, to a front-end process (round robin over
a Unix socket, SCM_RIGHTS) and served there for as long as the client keeps it. Each front-end
(``openai_compat/frontend.py``) runs the OpenAI service over one LMTP connection to this process,
whose frames carry all its requests' streams and tokens together; so this process's event loop
does per step and per front-end what it otherwise did per HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import asdict, replace

from lmql_core.errors import LMQLError
from lmql_core.lmtp.limits import Limits
from lmql_core.openai_compat.frontend import READY

log = logging.getLogger(__name__)
OPENAI_PATHS = (b"/v1/", b"/tokenize", b"/detokenize")
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0


def asks_for_openai(head: bytes) -> bool | None:
    """Whether a connection whose first bytes are ``head`` asks for OpenAI's API; None: too few
    bytes to tell."""
    method, space, rest = head.partition(b" ")
    if not space:
        return None if len(method) < 16 and b"\n" not in method else False
    for path in OPENAI_PATHS:
        if rest.startswith(path):
            return True
        if path.startswith(rest):  # (a prefix of it so far)
            return None
    return False


class Frontends:
    """The front-end processes of one server, and the channels its connections go to them by."""

    def __init__(self, count: int, limits: Limits, auth_token: str) -> None:
        if count < 1:
            raise LMQLError(f"--openai-processes must be at least 1, got {count}")
        if not sys.platform.startswith("linux"):  # (Unix sockets of packets that carry descriptors)
            raise LMQLError(f"--openai-processes runs on Linux only, not {sys.platform}: leave it out "
                            "(the server's own process then serves OpenAI's API)")
        self.count = count
        self.limits = limits
        self.auth_token = auth_token
        self.secret = secrets.token_urlsafe(32)  # what their LMTP connections show (app.FrontendTraffic)
        self._channels: list[socket.socket] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._next = 0

    async def start(self, upstream_url: str, models: list[str]) -> None:
        """Start them, and return once each serves (it has connected back and read the models)."""
        loop = asyncio.get_running_loop()
        # the connections handed over are theirs to count: together, at most the server's limit
        limits = replace(self.limits, max_connections=max(1, self.limits.max_connections // self.count))
        for _ in range(self.count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            env = {**os.environ, "LMQL_AUTH_TOKEN": self.auth_token, "LMQL_FRONTEND_SECRET": self.secret}
            command = [sys.executable, "-m", "lmql_core.openai_compat.frontend", "--channel-fd",
                       str(theirs.fileno()), "--upstream", upstream_url, "--models", json.dumps(models),
                       "--limits", json.dumps(asdict(limits))]
            self._processes.append(subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=env))
            theirs.close()
            ours.setblocking(False)
            self._channels.append(ours)
        try:
            said = await asyncio.wait_for(asyncio.gather(*(loop.sock_recv(c, 64) for c in self._channels)),
                                          START_TIMEOUT_S)
        except TimeoutError:
            raise LMQLError(f"OpenAI front-end processes did not start in {START_TIMEOUT_S:g} s") from None
        if any(answer != READY for answer in said):
            raise LMQLError("an OpenAI front-end process failed to start (its error is above)")

    def wants(self, head: bytes) -> bool | None:  # guard.HandOver
        return asks_for_openai(head)

    def take(self, transport: asyncio.Transport, head: bytes) -> bool:  # guard.HandOver
        """To the next front-end in turn (one that does not take it is skipped, and dropped if gone)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        for _ in range(len(self._channels)):
            channel = self._channels[self._next % len(self._channels)]
            self._next += 1
            try:
                socket.send_fds(channel, [head], [sock.fileno()])
            except BlockingIOError:  # that one is behind: the next
                continue
            except OSError as error:  # it has gone
                log.warning("an OpenAI front-end process is gone (%s); serving on without it", error)
                self._channels.remove(channel)
                channel.close()
                continue
            transport.abort()  # our descriptor; the front-end's keeps the connection open
            return True
        return False

    def stop(self) -> None:
        """Close their channels (each then finishes its requests and exits), then wait for them."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        for process in self._processes:
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(STOP_GRACE_S)
        self._processes.clear()


def loopback_url(sock: socket.socket) -> str:
    """The LMTP URL a front-end reaches the server by, through the server's listening ``sock``."""
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return f"ws://[{'::1' if host == '::' else host}]:{port}/"
    return f"ws://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"
