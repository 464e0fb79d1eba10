"""Inference certificates, as LMQL 0.7.3's ``lmql.certificate`` / ``certificate=`` on a call: JSON
with a tracer's recorded model requests and responses, its metrics and its children's."""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lmql_core.api.tracing import Tracer

CERTIFICATE_TYPE = "lmql.InferenceCertificate"
RETURN_DICT = "return_dict"  # certificate="return_dict": each result comes with its certificate


def _version() -> str:
    try:
        return f"{metadata.version('lmql-core')} (lmql-core)"
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (lmql-core)"


class InferenceCertificate:
    """The record of one traced context: ``str()`` is its JSON, ``asdict()`` the same as a dict."""

    def __init__(self, tracer: Tracer | None) -> None:
        self.tracer = tracer
        # fixed when issued, so that every rendering of one certificate is the same
        self.time = time.strftime("%Y-%m-%d %H:%M:%S %z")

    def asdict(self, child: bool = False) -> dict[str, Any]:
        tracer = self.tracer
        if tracer is None:
            return {"type": CERTIFICATE_TYPE,
                    "warning": "Untraced query. Make sure to use lmql.traced() or certificate=True to trace "
                               "your queries."}
        certificate: dict[str, Any] = {"name": tracer.name}
        if not child:
            certificate.update({"type": CERTIFICATE_TYPE, "lmql.version": _version(),
                                "time": self.time})
        if tracer.events:
            certificate["events"] = tracer.events
        if tracer.children:
            certificate["children"] = [InferenceCertificate(c).asdict(child=True) for c in tracer.children]
        if tracer.metrics:
            certificate["metrics"] = tracer.metrics
        return certificate

    def __str__(self) -> str:
        return json.dumps(self.asdict(), indent=4)

    __repr__ = __str__


def certificate(tracer: Tracer | None, empty_on_null: bool = False) -> InferenceCertificate | None:
    """The certificate of ``tracer`` (``with lmql.traced(...) as tracer``); for no tracer, None
    (or, with ``empty_on_null``, a certificate that says the context was not traced)."""
    if tracer is None:
        return InferenceCertificate(None) if empty_on_null else None
    if not isinstance(tracer, Tracer):
        raise TypeError(f"lmql.certificate takes the tracer of lmql.traced(...), not {tracer!r}")
    return InferenceCertificate(tracer)


def requested(option: Any) -> bool:
    """Whether a call's ``certificate=`` asks for one (LMQL: any true value; False and None do
    not); one that is neither of the forms ``deliver`` knows is refused before anything runs."""
    if not option:
        return False
    if option is True or callable(option) or isinstance(option, str | Path):
        return True
    raise TypeError(f"certificate= takes True, a file path, a callable or 'return_dict', not {option!r}")


def deliver(option: Any, tracer: Tracer, results: Any) -> Any:
    """Record the results in ``tracer`` and hand its certificate where ``option`` says: a callable
    is called with it, ``True`` prints it, a path is written, ``"return_dict"`` pairs each result
    with it (what the call then returns)."""
    results_list = results if isinstance(results, list) else [results]
    tracer.event("lmql.LMQLResult", results_list, skip_none=True)
    made = InferenceCertificate(tracer)
    if callable(option):
        option(made)
    elif option == RETURN_DICT:
        paired = [{"result": r, "certificate": made} for r in results_list]
        return paired if isinstance(results, list) else paired[0]
    elif option is True:
        print(str(made), flush=True)
    else:
        Path(option).write_text(str(made), encoding="utf-8")
    return results
