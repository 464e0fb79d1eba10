"""lmql-core replaces the ``lmql`` distribution (LMQL 0.7). Their files mixed with ours stop
``import lmql`` and the ``lmql`` command with one message, whichever was installed last."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lmql
import lmql_core

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def lmql_07_files(package: Path) -> None:
    # ours has an lmql/runtime too (LMQL's import paths for decorators), without interpreter.py
    (package / "runtime").mkdir(parents=True, exist_ok=True)
    (package / "runtime" / "interpreter.py").write_text("# LMQL 0.7's\n")


def test_lmql_07_files_beside_ours_stop_import_and_commands(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(Path(lmql.__file__).parent, site / "lmql")  # ours installed over LMQL 0.7
    lmql_07_files(site / "lmql")
    imported = python("import lmql", site)
    assert imported.returncode == 1 and "lmql-core replaces it" in imported.stderr
    command = python("import sys; sys.argv = ['lmql', 'backends']; from lmql_core.cli import main; main()", site)
    assert command.returncode == 1 and command.stderr.startswith("Error: LMQL 0.7")
    assert "Traceback" not in command.stderr


def test_lmql_07_installed_after_us_is_stopped_by_the_start_up_hook(tmp_path: Path) -> None:
    """LMQL 0.7 over lmql-core replaces our lmql/__init__.py and script; the .pth in site-packages
    (shipped in the wheel by setup.py) still notices."""
    site = tmp_path / "site"
    shutil.copytree(Path(lmql_core.__file__).parent, site / "lmql_core")
    shutil.copy(ROOT / "src" / "lmql_core_guard.pth", site)
    (site / "lmql").mkdir()
    (site / "lmql" / "__init__.py").write_text("print('LMQL 0.7 imported')\n")
    lmql_07_files(site / "lmql")
    load_site = f"import site; site.addsitedir({str(site)!r}); "
    imported = python(load_site + "import lmql", site)
    assert imported.returncode == 1 and "lmql-core replaces it" in imported.stderr
    assert "LMQL 0.7 imported" not in imported.stdout
    as_script = "import sys; sys.argv[0] = '/venv/bin/lmql'; "  # what LMQL's own `lmql` script runs
    command = python(as_script + load_site + "import lmql.cli", site)
    assert command.returncode == 1 and command.stderr.startswith("Error: LMQL 0.7")
    assert "Traceback" not in command.stderr
    clean = tmp_path / "clean"
    shutil.copytree(Path(lmql_core.__file__).parent, clean / "lmql_core")
    shutil.copy(ROOT / "src" / "lmql_core_guard.pth", clean)
    assert python(f"import site; site.addsitedir({str(clean)!r}); import sys; print(len(sys.meta_path))",
                  clean).returncode == 0


def test_the_wheel_ships_the_start_up_hook(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    import zipfile

    [wheel] = tmp_path.glob("lmql_core-*.whl")
    assert "lmql_core_guard.pth" in zipfile.ZipFile(wheel).namelist()
