"""lmql-core replaces the ``lmql`` distribution (LMQL 0.7): both own the ``lmql`` package, so the
other one's files beside ours mean a broken mix. Found, they stop ``import lmql`` and every
``lmql`` command with one message that says how to repair the environment."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# files only LMQL 0.7's distribution has in the lmql package
FOREIGN = ("runtime/interpreter.py", "language/compiler.py")


class MixedInstallation(ImportError):
    pass


def check(package_dir: Path | None = None) -> None:
    """Raise ``MixedInstallation`` when LMQL 0.7's files sit in the ``lmql`` package."""
    if package_dir is None:
        spec = importlib.util.find_spec("lmql")
        if spec is None or spec.origin is None:
            return
        package_dir = Path(spec.origin).parent
    found = [name for name in FOREIGN if (package_dir / name).exists()]
    if found:
        raise MixedInstallation(
            f"LMQL 0.7 (the 'lmql' distribution) is installed in the same environment as lmql-core "
            f"({package_dir}); both own the 'lmql' package and lmql-core replaces it. Repair: "
            "pip uninstall -y lmql lmql-core, then pip install lmql-core (or ./ from a checkout); "
            "keep LMQL 0.7 in a virtual environment of its own.")


class _Refuse:
    """A meta path finder that stops every import of ``lmql`` with the message."""

    def __init__(self, message: str) -> None:
        self.message = message

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name != "lmql" and not name.startswith("lmql."):
            return None
        if os.path.basename(sys.argv[0] if sys.argv else "") == "lmql":  # the `lmql` command
            sys.stderr.write(f"Error: {self.message}\n")
            raise SystemExit(1)
        raise MixedInstallation(self.message)


def install_guard() -> None:
    """Run at start-up by ``lmql_core_guard.pth``: LMQL 0.7 installed after lmql-core replaces our
    ``lmql/__init__.py`` and script, so only a start-up hook can still say what happened."""
    try:
        check(Path(__file__).resolve().parents[2] / "lmql")  # site-packages/lmql_core/base/this file
    except MixedInstallation as error:
        sys.meta_path.insert(0, _Refuse(str(error)))
    except Exception:  # noqa: BLE001 (never break interpreter start-up)
        pass
