"""Loading a model without importing what transformers imports for features a server never
uses: scikit-learn (assisted generation's ``roc_curve``, imported at the top of
``transformers.generation.candidate_generator`` in 5.17; 1.4-1.7 s of each start-up on the GPU
image, benchmarks/RESULTS.md).

While ``deferred()`` is active, importing a module under ``PREFIXES`` that is installed but not
imported yet gives a stand-in module whose names are ``Deferred`` references; after it, the
stand-ins leave ``sys.modules``, so a later import is the real one. A reference imports the real
module the first time it is used (called, an attribute read, subclassed), so what it does is
unchanged, only later; an ``isinstance`` check against one answers False while its module is not
imported, since no instance of a class exists before the module defining it ran.

Not deferred: ``torch._dynamo`` and ``torch.distributed.tensor`` (with sympy, 6.9 s on the GPU
image), though transformers imports them for features a server does not use either: both
transformers 5.17 and 5.25 use them while importing (``@torch._dynamo.assume_constant_result``,
``@torch.compiler.disable``, ``Replicate()`` in tensor-parallel tables), so deferring them would
take references that stand for call results and decorated functions too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

PREFIXES = ("sklearn",)
OFF_SWITCH = "LMQL_HF_DEFER_IMPORTS"  # 0: import everything as transformers asks
_lock = threading.RLock()
_deferring: set[str] = set()  # prefixes whose stand-ins are in sys.modules now
# asked of modules and functions by the import machinery and by inspect (of every module in
# sys.modules): answered as absent, not taken as a use
_PROBED = frozenset({"__path__", "__file__", "__cached__", "__wrapped__"})


def _prefix_of(name: str) -> str | None:
    return next((p for p in _deferring if name == p or name.startswith(p + ".")), None)


class Deferred:
    """A name of a deferred module, standing for the real object until first used."""

    __slots__ = ("_module", "_name")

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name

    def resolve(self) -> Any:
        return getattr(_real(self._module), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in _PROBED:
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __instancecheck__(self, instance: Any) -> bool:
        return _imported(self._module) and isinstance(instance, self.resolve())

    def __subclasscheck__(self, cls: type) -> bool:
        return _imported(self._module) and issubclass(cls, self.resolve())

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self.resolve(),)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


class StandIn(ModuleType):
    """A deferred module: each name read from it is a ``Deferred`` (the real one's, once imported)."""

    def __getattr__(self, name: str) -> Any:
        if name in _PROBED:
            raise AttributeError(name)
        if name.startswith("__") or _imported(self.__name__):  # __version__, __all__: a use
            return getattr(_real(self.__name__), name)
        return Deferred(self.__name__, name)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Gives a stand-in for any module under a deferred prefix (their parents are stand-ins too)."""

    def find_spec(self, name: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        with _lock:
            if _prefix_of(name) is None:
                return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return StandIn(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        pass


_FINDER = _StandInFinder()


def _imported(name: str) -> bool:
    """Whether the real module ``name`` has been imported (not a stand-in)."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, StandIn)


def _real(name: str) -> ModuleType:
    """The real module ``name``, imported now if needed (its prefix is no longer deferred)."""
    with _lock:
        prefix = _prefix_of(name)
        if prefix is not None:
            _deferring.discard(prefix)
            _evict(prefix)
    return importlib.import_module(name)


def _evict(prefix: str) -> None:
    for name in [n for n, m in sys.modules.items() if isinstance(m, StandIn)
                 and (n == prefix or n.startswith(prefix + "."))]:
        del sys.modules[name]


def _deferrable(prefix: str) -> bool:
    """Installed and not imported yet (an absent package must stay absent to transformers' checks)."""
    if prefix in sys.modules:
        return False
    root = prefix.partition(".")[0]
    if root not in sys.modules:
        return importlib.util.find_spec(root) is not None
    return importlib.util.find_spec(prefix) is not None


def _stand_in(prefix: str) -> ModuleType:
    return importlib.util.module_from_spec(importlib.machinery.ModuleSpec(prefix, _FINDER, is_package=True))


@contextlib.contextmanager
def deferred(enabled: bool = True, prefixes: tuple[str, ...] = PREFIXES) -> Iterator[None]:
    """Within the block, the modules under ``prefixes`` that are installed and not imported yet
    import as stand-ins; ``enabled`` False (or ``LMQL_HF_DEFER_IMPORTS=0``) leaves imports alone."""
    if not enabled or os.environ.get(OFF_SWITCH, "1") == "0":
        yield
        return
    with _lock:
        started = [p for p in prefixes if p not in _deferring and _deferrable(p)]
        for prefix in started:
            sys.modules[prefix] = _stand_in(prefix)
            _deferring.add(prefix)
        sys.meta_path.insert(0, _FINDER)
    try:
        yield
    finally:
        with _lock:
            sys.meta_path.remove(_FINDER)
            for prefix in started:
                if prefix in _deferring:
                    _deferring.discard(prefix)
                    _evict(prefix)
