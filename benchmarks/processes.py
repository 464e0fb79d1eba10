"""Starting server processes for the benchmarks: a free port, and waiting until it listens."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(command: list[str], port: int, timeout: float = 600,
                 **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` (which must listen on ``port``) and return once it accepts connections."""
    proc = subprocess.Popen(command, **popen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise TimeoutError(f"{command[:4]} did not start within {timeout:.0f} s")
