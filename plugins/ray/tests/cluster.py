"""A real `lmql serve-cluster` process (a local Ray, replicas with num_cpus=0) and what the tests
read from it: every replica's health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import RawClient, free_port

START_TIMEOUT_S = 240
MODEL = "lmql-tiny"
VOCAB = 2048  # lmql-tiny's
BOS = 1
NO_EOS = {"logit_bias": {"2": -100}}  # streams that run to max_tokens


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

    def wait_healthy(self, timeout: float, replicas: int | None = None) -> dict[str, Any]:
        """Until ``replicas`` replicas (default: as many as started) answer /health (after a
        start, a replica's restart, autoscaling)."""
        wanted = self.replicas if replicas is None else replicas
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-cluster exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, ValueError):
                status, answer = self.get("/health")
                if status == 200 and len(answer["replicas"]) == wanted:
                    return answer["replicas"]
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not become healthy with {wanted} replicas:\n{self.output()}")

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


def reused(replica: dict[str, Any], model: str = MODEL) -> int:
    return int(replica["models"][model]["reused_prefix_tokens"])


def served(health: dict[str, Any]) -> dict[str, int]:
    return {name: int(replica["streams_served"]) for name, replica in health.items()}


def prompt(seed: int, length: int = 24) -> list[int]:
    rng = random.Random(seed)
    return [BOS, *(rng.randrange(3, VOCAB) for _ in range(length - 1))]


def streams(endpoint: str, requests: dict[Any, tuple[str, dict[str, Any]]],
            timeout: float = 120) -> dict[Any, list[dict[str, Any]]]:
    """Every request (stream id -> command, body) on one connection at once; each stream's entries."""
    async def run() -> dict[Any, list[dict[str, Any]]]:
        async with RawClient(endpoint) as c:
            for sid, (command, body) in requests.items():
                await c.send(command, {"model": MODEL, "stream_id": sid, **body})
            return await c.collect(set(requests), timeout=timeout)
    return asyncio.run(run())
