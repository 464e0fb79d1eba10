"""Chat in LMQL programs on lmql-core: role tags, chat lists, ``await input()`` and
``lmql.lib.chat``'s ``@message``. Expected prompts are written out from LMQL 0.7.3's rules
(``PromptInterpreter.process_query_string``: a tag ``{:ROLE}`` is ``\\n((ROLE)):`` for every model
that is not an OpenAI chat model, without the newline when it opens the prompt); generated values
come from transformers' greedy decoding of lmql-tiny."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmql  # noqa: E402
from lmql.lib.chat import ChatMessageOutputWriter, message  # noqa: E402
from lmql_core.errors import LMQLError  # noqa: E402
from tests.test_query import greedy  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"


def greedy_text(reference: tuple[object, object], prompt: str, steps: int) -> str:
    return reference[1].decode(greedy(reference, prompt, steps))


class ScriptedUser(ChatMessageOutputWriter):
    """Answers ``await input()`` from a script and records what ``@message`` reports."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines, self.events = list(lines), []

    async def input(self, *args: object) -> str:
        self.events.append(("input", args))
        return self.lines.pop(0)

    def begin_message(self, variable: object) -> None:
        self.events.append(("begin", variable.name))

    def stream_message(self, text: str) -> None:
        self.events.append(("stream", text))

    def complete_message(self, text: str) -> None:
        self.events.append(("complete", text))


@pytest.mark.parametrize("where", ["local", "served"])
def test_role_tags_are_written_as_lmql_writes_them_for_local_models(reference, tiny_server, where) -> None:
    model = MODEL if where == "local" else lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    result = lmql.run_sync('''argmax
        "{:system} You are helpful."
        "{:user} Hi there"
        "{:assistant}[A]" where len(TOKENS(A)) < 5''', model=model)
    before = "((system)): You are helpful.\n((user)): Hi there\n((assistant)):"
    expected = greedy_text(reference, before, 4)
    assert result.variables == {"A": expected}
    assert result.prompt == before + expected


@pytest.mark.parametrize(("source", "prompt"), [
    ('"{:system}x" "{:user}y"', "((system)):x\n((user)):y"),  # only the opening tag loses its newline
    ('"Intro {:user} a{:tool}b"', "Intro \n((user)): a\n((tool)):b"),  # any role name
    ('" {:user}a"', " \n((user)):a"),  # the prompt's first text is not the tag
    ('"a<lmql:bot/>b"', "a\n((bot)):b"),  # the tag as LMQL writes it internally
    ('"{:user}[[x]] {{y}}"', "((user)):[x] {y}"),
])
def test_where_a_role_tag_keeps_its_newline(source: str, prompt: str) -> None:
    (result,) = lmql.run_sync(source, model=MODEL)  # no variable: LMQL gives the result in a list
    assert result.prompt == prompt


def test_a_chat_list_in_a_prompt_becomes_tagged_messages(reference) -> None:
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    result = lmql.run_sync('"{history}{:assistant}[A]" where len(TOKENS(A)) < 4', model=MODEL, history=history)
    before = "((system)):Be brief.\n((user)):Hi!\n((assistant)):"
    assert result.prompt == before + greedy_text(reference, before, 3)


@pytest.mark.parametrize("value", [
    [{"role": "user", "content": "hi", "name": "x"}],  # another key in the first message
    ["not", "dicts"],
    [],  # LMQL 0.7.3 raises IndexError on an empty list here; lmql-core writes it as it is
])
def test_other_lists_are_written_as_python_writes_them(value: list) -> None:
    (result,) = lmql.run_sync('"{value}"', model=MODEL, value=value)
    assert result.prompt == str(value)


def test_await_input_asks_the_output_writer(reference) -> None:
    @lmql.query(model=MODEL)
    def chatbot():
        '''lmql
        argmax
            "{:user} {await input('> ')}"
            "{:assistant}[A]" where len(TOKENS(A)) < 3
        '''

    user = ScriptedUser(["Hello!"])
    result = chatbot(output_writer=user)
    before = "((user)): Hello!\n((assistant)):"
    assert result.prompt == before + greedy_text(reference, before, 2)
    assert user.events == [("input", ("> ",))]


def test_await_input_reads_a_line_from_stdin_without_a_writer(tmp_path: Path, reference) -> None:
    script = tmp_path / "ask.py"
    script.write_text(textwrap.dedent('''
        import lmql
        result = lmql.run_sync(\'\'\'argmax
            "{:user} {await input('Your question: ')}{:assistant}[A]" where len(TOKENS(A)) < 3\'\'\',
            model="local:lmql-tiny")
        print("PROMPT", repr(result.prompt))
    '''))
    done = subprocess.run([sys.executable, str(script)], input="What is LMQL?\n", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before = "((user)): What is LMQL?\n((assistant)):"
    assert "Your question: " in done.stdout
    assert f"PROMPT {before + greedy_text(reference, before, 2)!r}" in done.stdout


def test_an_input_of_the_programs_own_is_not_replaced() -> None:
    def input(*args: object) -> str:  # noqa: A001 (the point: a global named input)
        return "mine"

    (result,) = lmql.run_sync('"{input()}"', model=MODEL)
    assert result.prompt == "mine"


def test_message_reports_to_a_chat_writer(reference) -> None:
    @lmql.query(model=MODEL)
    def chatbot():
        '''lmql
        "{:user} {await input()}{:assistant}[@message ANSWER]" where len(TOKENS(ANSWER)) < 4
        '''

    user = ScriptedUser(["Hi"])
    result = chatbot(output_writer=user)
    ids = greedy(reference, "((user)): Hi\n((assistant)):", 3)
    answer = reference[1].decode(ids)
    assert result.variables == {"ANSWER": answer}
    prefixes = [reference[1].decode(ids[:n]) for n in range(len(ids) + 1)]
    assert user.events == [("input", ()), ("begin", "ANSWER"), *[("stream", p) for p in prefixes],
                           ("complete", answer)]


def test_message_without_a_chat_writer_changes_nothing() -> None:
    plain = lmql.run_sync('"{:user} Hi{:assistant}[A]" where len(TOKENS(A)) < 4', model=MODEL)
    marked = lmql.run_sync('"{:user} Hi{:assistant}[@message A]" where len(TOKENS(A)) < 4', model=MODEL,
                           message=message)
    assert marked.prompt == plain.prompt and marked.variables == plain.variables


def test_a_decorator_listed_before_message_streams_none() -> None:
    """As LMQL's: ``MessageDecorator.stream`` returns None, and stream runs right to left."""
    seen = []

    @lmql.decorators.streaming
    def watch(text, context):
        seen.append(text)

    lmql.run_sync('"Hi[@watch @message A]" where len(TOKENS(A)) < 3', model=MODEL)
    assert seen and set(seen) == {None}


def test_the_browser_chat_server_is_refused_with_a_reason() -> None:
    from lmql.lib.chat import chatserver

    with pytest.raises(LMQLError, match="not part of lmql-core"):
        chatserver("chat.lmql")
