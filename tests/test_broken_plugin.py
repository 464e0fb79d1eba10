"""A plugin whose module fails to import (broken, or installed for another lmql-core) is left out
with one warning naming it; every other plugin and every command still works."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import run_lmql

BROKEN = "lmql_broken_plugin_for_tests"


def broken_plugin_on(path: Path) -> dict[str, str]:
    """A distribution on ``path`` whose ``lmql`` entry point names a module that raises on import."""
    info = path / "lmql_broken_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lmql-broken-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lmql]\nbroken = {BROKEN}\n")
    (path / f"{BROKEN}.py").write_text("raise ImportError('this plugin was built for another lmql-core')\n")
    return {"PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_that_fails_to_import_is_left_out_with_a_warning(tmp_path: Path) -> None:
    result = run_lmql("backends", env=broken_plugin_on(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "the lmql plugin 'broken' failed to load and is left out" in result.stderr
    assert "built for another lmql-core" in result.stderr
    assert "random" in result.stdout  # the built-in backend is still listed


def test_without_the_broken_plugin_there_is_no_warning(tmp_path: Path) -> None:
    result = run_lmql("backends")
    assert result.returncode == 0 and "failed to load" not in result.stderr
