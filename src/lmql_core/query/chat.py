"""Chat in prompts: role tags, chat lists as prompt text, and ``await input()``, as LMQL 0.7.3.

``{:user}`` (any ``{:ROLE}``) puts the tag ``<lmql:user/>`` in the prompt text. For a model that
is not one of OpenAI's chat models, which every LMTP model is, LMQL 0.7.3 writes each tag as
``\\n((user)):`` (``PromptInterpreter.process_query_string``); it never applies a tokenizer's chat
template. The newline is left out when the piece of prompt text that starts with the tag is the
first text of the prompt. A list of ``{"role": ..., "content": ...}`` dicts put in a prompt
(``"{messages}"``) becomes one tag and content per message.

``input`` inside a query is, as in LMQL, an async function: ``await input("> ")`` asks the run's
output writer when it has an ``input`` method, else reads a line as the built-in ``input`` does.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from typing import Any

TAG = re.compile(r"<lmql:(.*?)/>")
RUNTIME = "__lmql_runtime__"  # the run's QueryRuntime in the query's namespace


def tag(role: str) -> str:
    return f"<lmql:{role}/>"


def render_role_tags(text: str, first: bool) -> str:
    """Prompt text with its role tags written out; ``first``: nothing is in the prompt yet."""
    rendered = TAG.sub(lambda m: f"\n(({m[1]})):", text)
    if first and text.startswith("<lmql:"):
        rendered = rendered[1:]  # LMQL drops the first character, the tag's newline
    return rendered


def is_chat_list(value: Any) -> bool:
    """LMQL's test: a non-empty list of dicts whose first has no keys but role and content."""
    return (isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
            and all(key in ("role", "content") for key in value[0]))


def prompt_value(value: Any) -> Any:
    """What ``{value}`` puts in a prompt: a chat list as tagged messages, anything else as is."""
    if is_chat_list(value):
        return "".join(tag(m["role"]) + str(m["content"]) for m in value)
    return value


class QueryRuntime:
    """One run's link to its caller: the output writer (``context.runtime`` in decorators)."""

    def __init__(self, output_writer: Any = None) -> None:
        self.output_writer = output_writer

    async def input(self, *args: Any) -> Any:
        if hasattr(self.output_writer, "input"):
            return await self.output_writer.input(*args)
        return await asyncio.to_thread(builtins.input, *args)  # the line read off the client loop


def install_runtime(namespace: dict[str, Any], output_writer: Any) -> QueryRuntime:
    """Give a run's namespace its runtime; ``input`` becomes the runtime's unless the query's
    globals name another ``input`` than the built-in one."""
    runtime = QueryRuntime(output_writer)
    namespace[RUNTIME] = runtime
    if namespace.get("input", builtins.input) is builtins.input:
        namespace["input"] = runtime.input
    return runtime
