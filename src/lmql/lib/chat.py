"""``lmql.lib.chat``: chat programs, as LMQL 0.7.3's ``lmql.lib.chat``.

``[@message ANSWER]`` marks a variable as a message shown to the user: an output writer derived
from ``ChatMessageOutputWriter`` (passed as ``output_writer=`` to a query) hears when such a
message begins, each text it streams and when it is complete; with any other writer ``@message``
changes nothing. A writer's ``input`` method answers ``await input()`` in the query.

LMQL's browser chat server (``chatserver``, ``lmql chat``) is not part of lmql-core.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from lmql_core.errors import LMQLError
from lmql_core.query.decorators import LMQLDecorator, ProgramState, TemplateVariable


class ChatMessageOutputWriter:
    """An output writer told about ``@message`` variables (override the three ``*_message`` methods)."""

    def __init__(self, allows_input: bool = True) -> None:
        self.allows_input = allows_input

    async def input(self, *args: Any) -> str:
        """The user's next message (``await input()`` in the query); by default a line read from stdin."""
        if not self.allows_input:
            raise LMQLError("this output writer does not take input (allows_input=False)")
        return await asyncio.to_thread(input, *args)

    async def add_interpreter_head_state(self, *args: Any, **kwargs: Any) -> None:
        """LMQL's progress callback; lmql-core's runtime does not call it."""

    def add_compiler_output(self, code: str) -> None:
        pass

    def begin_message(self, variable: TemplateVariable) -> None:
        pass

    def stream_message(self, message: str) -> None:
        pass

    def complete_message(self, message: Any) -> None:
        pass


def _chat_writer(context: ProgramState) -> ChatMessageOutputWriter | None:
    writer = getattr(context.runtime, "output_writer", None)
    return writer if isinstance(writer, ChatMessageOutputWriter) else None


class MessageDecorator(LMQLDecorator):
    """``@message``: the variable's text goes to a ``ChatMessageOutputWriter`` as a chat message."""

    def pre(self, variable: TemplateVariable, context: ProgramState) -> Any:
        writer = _chat_writer(context)
        if writer is not None:
            writer.begin_message(variable)
        return variable

    def stream(self, variable_value: Any, context: ProgramState) -> None:
        # returns None, as LMQL's: a decorator listed before @message streams None
        writer = _chat_writer(context)
        if writer is not None:
            writer.stream_message(variable_value)

    def post(self, variable_value: Any, prompt_value: str, context: ProgramState) -> tuple[Any, str]:
        writer = _chat_writer(context)
        if writer is not None:
            writer.complete_message(variable_value)
        return super().post(variable_value, prompt_value, context)


message = MessageDecorator()


def chatserver(*args: Any, **kwargs: Any) -> NoReturn:
    raise LMQLError("lmql.lib.chat.chatserver (LMQL's browser chat UI) is not part of lmql-core: run the "
                    "query with an output writer derived from ChatMessageOutputWriter instead")


__all__ = ["ChatMessageOutputWriter", "MessageDecorator", "chatserver", "message"]
