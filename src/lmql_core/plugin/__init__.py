"""Everything a backend author imports, in one place (see README, "Writing a backend"); the
first-party plugins import nothing else of the core (``tests/test_layers.py`` holds them to it).

    from lmql_core.plugin import Backend, NumpyOps, Option, StepInput, StepOutput, hookimpl
    from lmql_core.plugin import check_backend  # in the plugin's tests
    from lmql_core.plugin import ChainedSteps, ReleasesTogether, TakesOver  # optional capabilities

Beyond the basics:
- tokenizers: ``BytesTokenizer``, ``JsonTokenizer``, ``find_tokenizer_json`` (a model folder's
  ``tokenizer.json``), ``vocab_fingerprint``;
- the registry: ``versions`` (for ``info()``), ``backend_for_name`` (a registered backend's spec,
  its options included);
- warming a GPU backend up with the engine's own sampling and scoring kernels before it serves,
  and sizing memory for them: ``SamplingParams``, ``sample_batch``, ``launch_scoring``,
  ``collect_scoring``, ``SCORE_ROWS``.
A plugin that serves models itself (lmql-ray) imports ``lmql_core.plugin.serving``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmql_core.base.array_ops import NumpyOps, TorchOps
from lmql_core.base.backend import Backend, ChainedSteps, ReleasesTogether, StepInput, StepOutput, TakesOver
from lmql_core.base.hookspecs import hookimpl
from lmql_core.base.options import Option, call_text
from lmql_core.errors import LMQLError, RequestError, TokenizerNotFound
from lmql_core.loading.plugin_manager import backend_for_name, versions
from lmql_core.loading.tokenizer import BytesTokenizer, JsonTokenizer, find_tokenizer_json, vocab_fingerprint

if TYPE_CHECKING:
    from lmql_core.engine.sampling import SCORE_ROWS, collect_scoring, launch_scoring, sample_batch
    from lmql_core.engine.sequence import SamplingParams
    from lmql_core.plugin.conformance import ConformanceError, check_backend

# loaded on first use: a plugin's hook module imports this one while the registry loads, and
# these pull in the engine (numpy) and the in-process server
_LATER = {"SCORE_ROWS": "lmql_core.engine.sampling", "collect_scoring": "lmql_core.engine.sampling",
          "launch_scoring": "lmql_core.engine.sampling", "sample_batch": "lmql_core.engine.sampling",
          "SamplingParams": "lmql_core.engine.sequence", "ConformanceError": "lmql_core.plugin.conformance",
          "check_backend": "lmql_core.plugin.conformance"}


def __getattr__(name: str) -> Any:
    if name not in _LATER:
        raise AttributeError(f"module 'lmql_core.plugin' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_LATER[name]), name)


__all__ = ["SCORE_ROWS", "Backend", "BytesTokenizer", "ChainedSteps", "ConformanceError", "JsonTokenizer",
           "LMQLError", "NumpyOps", "Option", "ReleasesTogether", "RequestError", "SamplingParams",
           "StepInput", "StepOutput", "TakesOver", "TokenizerNotFound", "TorchOps", "backend_for_name",
           "call_text", "check_backend", "collect_scoring", "find_tokenizer_json", "hookimpl",
           "launch_scoring", "sample_batch", "versions", "vocab_fingerprint"]
