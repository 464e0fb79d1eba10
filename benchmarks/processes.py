"""Starting server processes for the benchmarks: a free port, waiting until it listens, and
LMQL 0.7.3's server from carried wheels or its own environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
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


# LMQL 0.7.3's server, started through its own module (its `lmql` command may not be installed)
LMQL_073_SERVE = "import sys; from lmql.models.lmtp.lmtp_serve import cli; cli(sys.argv[1:])"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def install_wheels(wheels: Path, site: Path) -> Path:
    """Install the carried wheels (no index, no dependencies) into ``site``, once."""
    stamp = site / ".installed-from"
    if not (stamp.exists() and stamp.read_text() == str(wheels.resolve())):
        wheel_files = [str(w) for w in sorted(wheels.glob("*.whl"))]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--upgrade", "--target", str(site), *wheel_files], check=True)
        stamp.write_text(str(wheels.resolve()))
    return site


def lmql_073_env(site: Path | None, gpu: str | None) -> dict[str, str]:
    """An environment for LMQL 0.7.3's process: only its own packages on PYTHONPATH (both it and
    lmql-core ship a top-level ``lmql``), nothing downloads, and the one GPU it may use."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OFFLINE_ENV)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env
