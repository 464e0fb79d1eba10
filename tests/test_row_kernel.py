"""The one-row Triton kernel (lmql_hf.gemv_kernel) on the CPU, through Triton's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("lmql_hf")

pytestmark = pytest.mark.hf

def _interpreted(checks: str) -> str:
    """Triton picks interpreter or compiler at import: the checks run in a process of their own."""
    path = Path(__file__).with_name(checks)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=path.parent.parent,
        capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "skipped" not in result.stdout, result.stdout[-2000:]
    return result.stdout


def test_the_kernel_computes_what_cublas_does_under_the_interpreter() -> None:
    assert "10 passed" in _interpreted("row_kernel_checks.py")


def test_fused_decoder_layers_compute_what_transformers_does_under_the_interpreter() -> None:
    assert "25 passed" in _interpreted("one_row_layer_checks.py")
