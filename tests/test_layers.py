"""The core's layers point down only: a module imports its own layer and those below, never one
above. Read from the sources (every import statement, also those inside functions), nothing run."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SOURCES = ROOT / "src"
ROOT_PACKAGE = "lmql_core"
# From the top down; a module belongs to the entry that names it or its package (the longest).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("lmql", ROOT_PACKAGE, "lmql_core.__main__", "lmql_core.cli"),  # facades, the command
    ("lmql_core.plugin", "lmql_core.plugin.serving"),  # what a plugin imports (KIT)
    ("lmql_core.plugin.conformance", "lmql_core.query"),
    ("lmql_core.api",),
    ("lmql_core.serving",),  # server start-up, the serving commands' options
    ("lmql_core.builtin",),  # the core's own plugin: tokenizers, transports
    ("lmql_core.lmtp.local",),
    ("lmql_core.lmtp.server", "lmql_core.openai_compat"),  # LMTP's server, OpenAI's HTTP API on it
    ("lmql_core.lmtp.client",),
    ("lmql_core.loading.model_host",),
    ("lmql_core.lmtp", "lmql_core.lmtp.wire", "lmql_core.lmtp.limits"),
    ("lmql_core.loading.tokenizer", "lmql_core.loading.identifiers"),
    ("lmql_core.loading", "lmql_core.loading.plugin_manager", "lmql_core.builtin.random_backend"),
    ("lmql_core.engine",),
    ("lmql_core.constraints",),  # constraint kinds: the query runtime's and the engine's
    ("lmql_core.base.backend",),
    ("lmql_core.base", "lmql_core.base.array_ops", "lmql_core.base.options", "lmql_core.base.hookspecs",
     "lmql_core.base.coexistence"),
    ("lmql_core.errors", "lmql_core.base.api_names"),
)
# The modules a plugin may import of the core; the first-party plugins are held to it, as a
# third party's would be (they copy ours).
KIT = ("lmql_core.plugin", "lmql_core.plugin.serving")
PLUGIN_SOURCES = (*sorted((ROOT / "plugins").glob("*/src")), ROOT / "tests" / "plugin_example" / "src")
# (importer, imported): arrows up on purpose, each with its reason
ALLOWED_UP = {
    ("lmql_core.query.program", "lmql"): "a query program sees `lmql` as in LMQL (`lmql.F`, `lmql.model`)",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCES).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SOURCES.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of our own modules in the file at ``path``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module` imports that module
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if is_module(submodule) else node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in ("lmql", ROOT_PACKAGE)]


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer; the root package entry stands for itself alone."""
    best: tuple[int, int] | None = None
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            inside = module == entry or (entry != ROOT_PACKAGE and module.startswith(entry + "."))
            if inside and (best is None or len(entry) > best[1]):
                best = (index, len(entry))
    return best[0] if best else None


def our_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCES.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    missing = [name for name in our_modules() if layer_of(name) is None]
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for name, path in our_modules().items():
        for line, imported in imports(path):
            below, above = layer_of(name), layer_of(imported)
            if below is not None and above is not None and above < below and (name, imported) not in ALLOWED_UP:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {imported}")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an import of the engine from the backend interface is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from lmql_core.engine import engine\n    from lmql_core.loading import plugin_manager\n")
    assert imports(probe) == [(2, "lmql_core.engine.engine"), (3, "lmql_core.loading.plugin_manager")]
    assert layer_of("lmql_core.engine.engine") < layer_of("lmql_core.base.backend")  # type: ignore[operator]


def test_plugins_import_only_the_kit() -> None:
    outside = []
    for source in PLUGIN_SOURCES:
        for path in sorted(source.rglob("*.py")):
            outside += [f"{path.relative_to(ROOT)}:{line}: imports {name}"
                        for line, name in imports(path) if name not in KIT]
    assert not outside, "plugins import only lmql_core.plugin (widen the kit instead):\n" + "\n".join(outside)


def test_the_plugin_check_sees_a_core_import(tmp_path: Path) -> None:
    """The check itself: the kit passes, the engine, the plugin manager and the facade do not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from lmql_core.plugin import hookimpl\nfrom lmql_core import plugin\n"
                     "from lmql_core.plugin.serving import wire\nimport lmql\n"
                     "def f():\n    from lmql_core.engine.sampling import sample_batch\n"
                     "    from lmql_core.loading import plugin_manager\n")
    assert [name for _, name in imports(probe) if name not in KIT] == [
        "lmql", "lmql_core.engine.sampling", "lmql_core.loading.plugin_manager"]
    assert len(PLUGIN_SOURCES) >= 4  # hf, llamacpp, ray and the example: none left unchecked
