"""Everything a backend author imports, in one place (see README, "Writing a backend").

    from lmql_core.plugin import Backend, NumpyOps, Option, StepInput, StepOutput, hookimpl
    from lmql_core.plugin import check_backend  # in the plugin's tests
    from lmql_core.plugin import ChainedSteps, ReleasesTogether  # optional capabilities
"""

from lmql_core.array_ops import NumpyOps, TorchOps
from lmql_core.backend import Backend, ChainedSteps, ReleasesTogether, StepInput, StepOutput
from lmql_core.conformance import ConformanceError, check_backend
from lmql_core.errors import LMQLError
from lmql_core.hookspecs import hookimpl
from lmql_core.options import Option, call_text
from lmql_core.plugins import versions
from lmql_core.tokenizer import BytesTokenizer, JsonTokenizer

__all__ = ["Backend", "BytesTokenizer", "ChainedSteps", "ConformanceError", "JsonTokenizer", "LMQLError",
           "NumpyOps", "Option", "ReleasesTogether", "StepInput", "StepOutput", "TorchOps", "call_text",
           "check_backend", "hookimpl", "versions"]
