"""Ray stays optional (issue 30): lmql-core declares no Ray dependency and none of its modules
imports Ray, even inside a function; lmql-ray's tests run in an environment of their own
(nox's ray session), the tests session's has no Ray."""

from __future__ import annotations

import ast
import re
from importlib.metadata import requires
from pathlib import Path

from tests.conftest import ROOT


def ray_imports(path: Path) -> list[int]:
    """The lines of ``path`` that import ``ray`` or one of its modules."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        lines += [node.lineno for name in names if name.split(".")[0] == "ray"]
    return lines


def test_lmql_core_neither_requires_nor_imports_ray() -> None:
    requirements = requires("lmql-core") or []  # extras too, each with its `extra == ...` marker
    assert requirements and [r for r in requirements if re.match(r"ray\b", r)] == []
    importers = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / "src").rglob("*.py"))
                 for line in ray_imports(path)]
    assert importers == []


def test_the_check_finds_an_import_of_ray(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from ray import serve\n    import ray.util, json\n")
    assert ray_imports(module) == [4, 5]
    module.write_text("import raylib\nfrom .ray import x\n")
    assert ray_imports(module) == []
