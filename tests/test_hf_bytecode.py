"""The warning of a start-up that compiles torch's sources again (lmql_hf.loading.bytecode)."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("lmql_hf")

from lmql_hf.loading.bytecode import recompiled_each_start  # noqa: E402


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"uncompiled_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_package_without_bytecode_that_python_will_not_write_is_named(
        package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert recompiled_each_start((package,)) == [package]
    compileall.compile_dir(str(tmp_path / package), quiet=2)
    assert recompiled_each_start((package,)) == []


def test_bytecode_python_will_write_at_this_start_is_no_concern(package: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert recompiled_each_start((package,)) == []
    assert recompiled_each_start((f"absent_{uuid.uuid4().hex[:8]}",)) == []


def test_the_warning_names_torch_and_the_command(tmp_path: Path) -> None:
    """As on the GPU image: no bytecode where Python looks (an empty PYTHONPYCACHEPREFIX) and
    none written."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-W", "default", "-c",
                             "from lmql_hf.loading.bytecode import warn_if_recompiled; warn_if_recompiled()"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no cached bytecode for torch, transformers, sympy" in result.stderr
    assert "python -m compileall -q -j 0 " in result.stderr
