"""``lmql.runtime.tracing``: the module path LMQL 0.7.3's documentation names for tracing
(``add_extra_redact_keys``; ``@trace``, ``traced``, ``Tracer``, ``certificate``)."""

from lmql_core.api.certificate import InferenceCertificate, certificate
from lmql_core.api.tracing import (
    ContextTracer,
    Event,
    Tracer,
    active_tracer,
    add_extra_redact_keys,
    trace,
    traced,
)

__all__ = ["ContextTracer", "Event", "InferenceCertificate", "Tracer", "active_tracer",
           "add_extra_redact_keys", "certificate", "trace", "traced"]
