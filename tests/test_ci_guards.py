"""What keeps the test command honest: loud (and in CI fatal) module skips, a run that checks
nothing failing, CI running exactly the README's test command with lint, typecheck, compat and
ray, and nox refusing to skip a missing interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SKIPPED_MODULE = 'import pytest\npytest.importorskip("lmql_no_such_module")\n\ndef test_x():\n    pass\n'
PASSING_MODULE = "def test_y():\n    assert True\n"


def run_pytest(folder: Path, strict: bool, *names: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LMQL_STRICT_SKIPS")}
    if strict:
        env["CI"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_report", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), *(str(folder / n) for n in names)],
                          capture_output=True, text=True, cwd=folder, env=env, timeout=120)


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    (tmp_path / "test_skipped.py").write_text(SKIPPED_MODULE)
    (tmp_path / "test_passing.py").write_text(PASSING_MODULE)
    return tmp_path


def test_a_module_skipped_whole_is_named_loudly(modules: Path) -> None:
    result = run_pytest(modules, False, "test_skipped.py", "test_passing.py")
    assert result.returncode == 0, result.stdout
    assert "SKIPPED MODULE test_skipped.py: could not import 'lmql_no_such_module'" in result.stdout


def test_in_ci_a_module_skipped_whole_fails_the_run(modules: Path) -> None:
    result = run_pytest(modules, True, "test_skipped.py", "test_passing.py")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "SKIPPED MODULE test_skipped.py" in result.stdout
    assert run_pytest(modules, True, "test_passing.py").returncode == 0


def test_in_ci_a_run_where_nothing_passed_fails(tmp_path: Path) -> None:
    (tmp_path / "test_skips.py").write_text("import pytest\n\n@pytest.mark.skip\ndef test_z():\n    pass\n")
    result = run_pytest(tmp_path, True, "test_skips.py")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED and "no test passed" in result.stdout
    assert run_pytest(tmp_path, False, "test_skips.py").returncode == 0


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return next(line for line in readme.splitlines() if line.startswith("python3 -m venv .venv-nox &&"))


def test_ci_runs_exactly_the_readmes_test_command_with_lint_and_typecheck() -> None:
    command = readme_test_command()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == command
    sessions = command.split("nox -s", 1)[1].split()
    assert {"tests", "lint", "typecheck", "compat", "ray"} <= set(sessions)


def test_nox_fails_on_a_missing_interpreter_and_tests_run_strict() -> None:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    assignments = {ast.unparse(node.targets[0]): ast.unparse(node.value)
                   for node in ast.walk(tree) if isinstance(node, ast.Assign)}
    assert assignments.get("nox.options.error_on_missing_interpreters") == "True"
    assert '"LMQL_STRICT_SKIPS": "1"' in (ROOT / "noxfile.py").read_text()
