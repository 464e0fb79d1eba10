"""The kit of a plugin that serves models itself, as lmql-ray does (replicas behind one endpoint):
the core's own server parts, to run requests exactly as ``lmql serve-model`` does.

- ``wire``: LMTP frames and request rules; ``Limits``: the server's limits (``lmtp.limits``);
- ``ModelHost``, ``load_model``, ``parse_model_id``: load a model into an engine and hold it;
- ``Session``: LMTP requests on a ``ModelHost``; ``OpenAIService``, ``OpenAIError``,
  ``parse_json``: OpenAI's API on the same; ``Traffic``, ``render_metrics``: ``/metrics``;
- for a command of its own (``register_commands``): ``shown_errors``, ``model_and_loader_args``,
  ``checked_loader_args``, ``limit_options``, ``command_line_pairs``; ``shown`` quotes a value in
  an error message.
"""

from lmql_core.base.options import command_line_pairs
from lmql_core.errors import LMQLError, RequestError, shown
from lmql_core.lmtp import wire
from lmql_core.lmtp.limits import Limits
from lmql_core.lmtp.server.metrics import Traffic, render_metrics
from lmql_core.lmtp.server.session import Session
from lmql_core.loading.identifiers import parse_model_id
from lmql_core.loading.model_host import ModelHost, load_model
from lmql_core.openai_compat.requests import OpenAIError, parse_json
from lmql_core.openai_compat.service import OpenAIService
from lmql_core.serving.command_line import (
           checked_loader_args,
           limit_options,
           model_and_loader_args,
           shown_errors,
)

__all__ = ["LMQLError", "Limits", "ModelHost", "OpenAIError", "OpenAIService", "RequestError", "Session",
           "Traffic", "checked_loader_args", "command_line_pairs", "limit_options", "load_model",
           "model_and_loader_args", "parse_json", "parse_model_id", "render_metrics", "shown", "shown_errors",
           "wire"]
