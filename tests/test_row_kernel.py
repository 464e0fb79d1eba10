"""The HF backend's Triton kernels on the CPU, through Triton's interpreter: the one-row matrix
product (lmql_hf.kernels.gemv_kernel) and the attention over the slot cache (lmql_hf.kernels.slot_attention)."""

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
HERE = Path(__file__).parent


@pytest.mark.parametrize(("checks", "count"), [
    ("row_kernel_checks.py", 10),  # the one-row product against float64
    ("one_row_layer_checks.py", 33),  # fused decoder layers (Llama, Qwen2, Qwen3, GPT-2) against transformers; cache kernels
    ("slot_attention_checks.py", 22),  # attention over the slot cache against float64, generate, mixed traffic
])
@pytest.mark.timeout(900)  # interpreted kernels: minutes for whole backends on a 2-core machine
def test_the_kernels_compute_what_references_do_under_the_interpreter(checks: str, count: int) -> None:
    """Triton picks interpreter or compiler at import: the checks run in a process of their own."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / checks)],
        env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=HERE.parent,
        capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{count} passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
