"""Telling a user whose Python compiles torch's sources again at every start.

Without cached bytecode that Python may not write either (``PYTHONDONTWRITEBYTECODE``, a
read-only image), every start compiles the sources of torch, transformers and sympy again: 7-9 s
of each start-up on the GPU image measured in benchmarks/RESULTS.md, more than loading the
weights. Compiling them once (as ``pip install`` does) removes it; a warning says how.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
import warnings
from pathlib import Path

SENTINELS = ("torch", "transformers", "sympy")  # the start-up's biggest imports


def recompiled_each_start(packages: tuple[str, ...] = SENTINELS) -> list[str]:
    """The packages (by their ``__init__``) without cached bytecode where this interpreter looks
    for it, and where it will not write it this time either. Imports none of them."""
    found = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        cached = Path(importlib.util.cache_from_source(spec.origin))
        if not cached.exists() and not _will_write(cached):
            found.append(name)
    return found


def _will_write(cached: Path) -> bool:
    if sys.dont_write_bytecode:
        return False
    folder = next((p for p in (cached.parent, *cached.parents) if p.exists()), None)
    return folder is not None and os.access(folder, os.W_OK)


def warn_if_recompiled() -> None:
    packages = recompiled_each_start()
    if packages:
        warnings.warn(f"no cached bytecode for {', '.join(packages)}, and Python will not write it: "
                      "every start compiles their sources again (seconds). Compile them once: "
                      f"python -m compileall -q -j 0 {sysconfig.get_paths()['purelib']} (where that "
                      "folder is read-only, with PYTHONPYCACHEPREFIX set to a writable one, for "
                      "compileall and the server alike)", stacklevel=2)
