"""The array operations' old home, kept for plugins written against it (the README named
``lmql_core.engine.array_ops.NumpyOps``): they live in ``lmql_core.array_ops`` now, below both
the backend interface and the engine. New code imports them from there or ``lmql_core.plugin``."""

from lmql_core.array_ops import ArrayOps, NumpyOps, TorchOps

__all__ = ["ArrayOps", "NumpyOps", "TorchOps"]
