"""The HF backend's rooms (docs/design.md, "The HF backend's rooms") import down only, with no
circle of modules, and the Triton kernels are imported only inside functions (a CPU install
has no Triton). Read from the sources (every import statement, also those inside functions),
nothing run."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SOURCES = ROOT / "plugins" / "hf" / "src"
PACKAGE = "lmql_hf"
# From the top down; a module belongs to the entry that names it or its package (the longest).
ROOMS: tuple[tuple[str, ...], ...] = (
    ("lmql_hf.plugin",),
    ("lmql_hf.backend", "lmql_hf.warm_up", "lmql_hf.description"),
    ("lmql_hf.cuda", "lmql_hf.cpu"),
    ("lmql_hf.cache", "lmql_hf.loading"),
    ("lmql_hf.kernels",),
    ("lmql_hf.options", "lmql_hf.bundled", PACKAGE),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCES).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted((SOURCES / PACKAGE).rglob("*.py"))}


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, at module level) for every import of a module of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module` imports that module
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else node.module, id(node) in top))
    return [(line, name, level) for line, name, level in found if name in MODULES]


def room_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, room in enumerate(ROOMS):
        for entry in room:
            inside = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if inside and (best is None or len(entry) > best[1]):
                best = (index, len(entry))
    return best[0] if best else None


def test_every_module_has_a_room() -> None:
    missing = [name for name in MODULES if room_of(name) is None]
    assert not missing, f"place these modules in ROOMS: {missing}"


def test_rooms_import_down_only() -> None:
    up = [f"{path.relative_to(SOURCES)}:{line}: {name} -> {imported}"
          for name, path in MODULES.items() for line, imported, _ in imports(path)
          if (room_of(imported) or 0) < (room_of(name) or 0)]
    assert not up, "imports from a lower room to a higher one:\n" + "\n".join(up)


def test_no_module_is_part_of_an_import_circle() -> None:
    arrows = {name: {imported for _, imported, _ in imports(path)} - {name} for name, path in MODULES.items()}
    done: set[str] = set()

    def walk(name: str, trail: list[str]) -> None:
        assert name not in trail, "an import circle: " + " -> ".join([*trail[trail.index(name):], name])
        if name not in done:
            for imported in sorted(arrows[name]):
                walk(imported, [*trail, name])
            done.add(name)

    for name in MODULES:
        walk(name, [])


def test_the_triton_kernels_are_imported_only_inside_functions() -> None:
    with_triton = {name for name, path in MODULES.items()
                   if any(imported == "triton" for imported in _top_level_imports(path))}
    assert with_triton == {"lmql_hf.kernels.gemv_kernel", "lmql_hf.kernels.rows_kernel",
                           "lmql_hf.kernels.cache_kernels", "lmql_hf.kernels.slot_attention",
                           "lmql_hf.kernels.dependent_launch", "lmql_hf.kernels.best_kernel"}
    # (a kernel module may import another at its top: it needs Triton itself)
    at_top = [f"{path.relative_to(SOURCES)}:{line}: {imported}" for name, path in MODULES.items()
              if name not in with_triton
              for line, imported, level in imports(path) if level and imported in with_triton]
    assert not at_top, "a module-level import of a Triton kernel fails where Triton is not:\n" + "\n".join(at_top)


def _top_level_imports(path: Path) -> list[str]:
    return [alias.name for node in ast.parse(path.read_text(encoding="utf-8")).body
            if isinstance(node, ast.Import) for alias in node.names]
