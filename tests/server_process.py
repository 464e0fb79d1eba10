"""A server process on a free loopback port, ours or a third party's: started with its output in
a log, waited for until a probe says it is ready, stopped with SIGTERM (then SIGKILL).

Used by the test fixtures (``conftest.Server``, llama-cpp-python's server) and by the
compatibility runner (``compat/run_compat.py``, which runs outside pytest)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

TAIL = 8000  # characters of a log shown when a server does not start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_log(name: str, path: Path | None) -> IO[str]:
    """A log the process writes (closed in ``ServerProcess.stop``: it outlives this call)."""
    if path is not None:
        return path.open("w+")
    return tempfile.NamedTemporaryFile("w+", prefix=f"{name}-", suffix=".log")  # noqa: SIM115


class ServerProcess:
    """``command`` already names ``port``; ``env`` is the whole environment (None: this one's);
    ``log``: where its output goes (None: a temporary file, removed when it stops)."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.log: IO[str] = open_log(name, log)
        self.log_path = Path(self.log.name)
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._last_output = ""  # what it wrote, kept when the log closes (a temporary one goes)

    def wait_ready(self, ready: Callable[[], bool], timeout: float, poll: float = 0.1,
                   failed: Callable[[str], bool] | None = None) -> None:
        """Until ``ready()`` holds; an error if the process exits, ``failed(output)`` holds, or
        ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output(TAIL)}")
            if failed is not None and failed(self.output()):
                raise RuntimeError(f"{self.name} failed:\n{self.output(TAIL)}")
            if ready():
                return
            time.sleep(poll)
        raise TimeoutError(f"{self.name} did not start:\n{self.output(TAIL)}")

    def accepts_connections(self) -> bool:
        """A probe: whether the port takes a TCP connection."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
            return True
        return False

    def output(self, tail: int | None = None) -> str:
        if not self.log.closed:
            self.log.flush()
            self._last_output = self.log_path.read_text(errors="replace")
        return self._last_output if tail is None else self._last_output[-tail:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output()
        self.log.close()
        return self.proc.returncode
