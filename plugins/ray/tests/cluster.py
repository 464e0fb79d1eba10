"""A real `lmql serve-cluster` process (a local Ray, replicas with num_cpus=0) and what the tests
read from it: every replica's health."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port

START_TIMEOUT_S = 240


class Cluster:
    def __init__(self, model: str, *args: str, replicas: int = 2) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.replicas = replicas
        command = [sys.executable, "-m", "lmql_core", "serve-cluster", model, "--replicas", str(replicas),
                   "--cpus-per-replica", "0", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="lmql-cluster-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "RAY_AUTH_MODE": "disabled"}, start_new_session=True)
        self.wait_healthy(START_TIMEOUT_S)

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Until every replica answers /health (after a start, or a replica's restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-cluster exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, ValueError):
                status, answer = self.get("/health")
                if status == 200 and len(answer["replicas"]) == self.replicas:
                    return answer["replicas"]
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not become healthy:\n{self.output()}")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}{path}", timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            body, status = error.read(), error.code
        text = body.decode()
        return status, json.loads(text) if text.startswith("{") else text

    def health(self) -> dict[str, Any]:
        """Each replica's /health, by replica name."""
        status, answer = self.get("/health")
        assert status == 200, answer
        return dict(answer["replicas"])

    def output(self) -> str:
        if self.log.closed:
            return self.final_output
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM: the command removes its application and stops the local Ray it started;
        ``output()`` still reads the log afterwards."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.final_output = self.output()
        self.log.close()
        return self.proc.returncode


def reused(replica: dict[str, Any], model: str = "lmql-tiny") -> int:
    return int(replica["models"][model]["reused_prefix_tokens"])


def served(health: dict[str, Any]) -> dict[str, int]:
    return {name: int(replica["streams_served"]) for name, replica in health.items()}
