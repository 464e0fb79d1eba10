"""Variable decorators in LMQL programs on lmql-core (``"[@fn VAR]"``, ``lmql.decorators``).

What each stage may do follows LMQL 0.7.3's ``lmql/runtime/decorators.py`` and its interpreter: a
plain function is a post decorator; ``pre`` may fix a value the model is then led through (every
other constraint on the variable set aside); ``streaming`` sees the text before each token; pre
runs left to right, stream and post right to left. After a value is rewritten, the prompt's
tokens follow LMQL's rule (the value's text and the text after it tokenized apart). Generated
values come from transformers' greedy decoding of lmql-tiny."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmql  # noqa: E402
from tests.test_query import greedy, greedy_after  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"


def encode(reference: tuple[object, object], text: str) -> list[int]:
    return reference[1](text, add_special_tokens=False)["input_ids"]


def continuation(reference: tuple[object, object], ids: list[int], steps: int) -> str:
    """transformers' greedy text after the token ids ``ids`` (BOS not added)."""
    return reference[1].decode(greedy_after(reference, ids, steps))


def after(reference: tuple[object, object], *texts: str) -> list[int]:
    """BOS and each text tokenized apart (LMQL's tokens after a variable's value was rewritten)."""
    ids = [reference[1].bos_token_id]
    for text in texts:
        ids += encode(reference, text)
    return ids


@pytest.mark.parametrize("where", ["local", "served"])
def test_a_plain_function_is_a_post_decorator(reference, tiny_server, where) -> None:
    model = MODEL if where == "local" else lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    seen = []

    def length(value):
        seen.append(value)
        return len(value)

    result = lmql.run_sync('''"Say:[@length R]" where len(TOKENS(R)) < 6
        "\\nNext:[S]" where len(TOKENS(S)) < 4''', model=model)
    generated = reference[1].decode(greedy(reference, "Say:", 5))
    following = continuation(reference, after(reference, "Say:", str(len(generated)), "\nNext:"), 3)
    assert seen == [generated]
    assert result.variables == {"R": len(generated), "S": following}
    assert result.prompt == f"Say:{len(generated)}\nNext:{following}"


def test_a_post_decorator_may_set_the_value_and_the_prompt_text(reference) -> None:
    def shout(value, prompt_value, context):
        return value.upper(), "[" + prompt_value.strip() + "]"

    result = lmql.run_sync('''"Color:[@shout C]" where len(TOKENS(C)) < 4
        " Why?[W]" where len(TOKENS(W)) < 3''', model=MODEL)
    generated = reference[1].decode(greedy(reference, "Color:", 3))
    shown = "[" + generated.strip() + "]"
    following = continuation(reference, after(reference, "Color:", shown, " Why?"), 2)
    assert result.variables == {"C": generated.upper(), "W": following}
    assert result.prompt == f"Color:{shown} Why?{following}"


def test_a_post_decorator_taking_three_arguments_sees_the_program_state(reference) -> None:
    calls = []
    writer = object()

    def inspect_state(value, prompt_value, context):
        calls.append((value, prompt_value, context.prompt, context.get("N"), context.runtime.output_writer))

    result = lmql.run_sync('"Count: 1, 2,[@inspect_state N]" where INT(N) and len(TOKENS(N)) < 3',
                           model=MODEL, output_writer=writer)
    value = result.variables["N"]
    (raw,) = [c[3] for c in calls]
    assert isinstance(value, int) and str(value) in raw  # the raw text before INT's postprocessing
    assert calls == [(value, str(value), "Count: 1, 2,", raw, writer)]


def test_a_pre_decorator_fixes_the_value_over_every_other_constraint(reference) -> None:
    @lmql.decorators.pre
    def fixed(variable):
        return " Paris" if variable.name == "CITY" else variable

    result = lmql.run_sync('''"The capital is[@fixed CITY]" where len(TOKENS(CITY)) < 1
        ". Also[@fixed X]" where len(TOKENS(X)) < 3''', model=MODEL)
    following = continuation(reference, after(reference, "The capital is", " Paris", ". Also"), 2)
    assert result.variables == {"CITY": " Paris", "X": following}


def test_a_pre_decorator_may_fix_value_and_prompt_text_apart(reference) -> None:
    @lmql.decorators.pre
    def lookup(variable, context):
        assert context.prompt == "The answer is"
        return 42, " forty-two"

    result = lmql.run_sync('"The answer is[@lookup N]. So[M]" where INT(N) and len(TOKENS(M)) < 3', model=MODEL)
    following = continuation(reference, after(reference, "The answer is", " forty-two", ". So"), 2)
    assert result.variables == {"N": 42, "M": following}
    assert result.prompt == f"The answer is forty-two. So{following}"


def test_a_pre_decorator_that_returns_none_fixes_the_text_none() -> None:
    """LMQL 0.7.3's quirk, kept: its fixed-value constraint gives back None, read as no value."""
    none = lmql.decorators.pre(lambda variable: None)
    result = lmql.run_sync('"Hi[@none A]"', model=MODEL, none=none)
    assert result.variables == {"A": "None"} and result.prompt == "HiNone"


def test_a_streaming_decorator_sees_the_text_before_each_token(reference) -> None:
    seen = []

    @lmql.decorators.streaming
    def watch(text, context):
        seen.append((text, context.get("A")))

    result = lmql.run_sync('"Hello[@watch A]" where len(TOKENS(A)) < 5', model=MODEL)
    ids = greedy(reference, "Hello", 4)
    prefixes = [reference[1].decode(ids[:n]) for n in range(len(ids) + 1)]
    assert [text for text, _ in seen] == prefixes
    assert all(text == state for text, state in seen)
    assert result.variables == {"A": prefixes[-1]}


def test_pre_runs_left_to_right_stream_and_post_right_to_left() -> None:
    log = []

    class Tracer(lmql.decorators.LMQLDecorator):
        def __init__(self, label):
            self.label = label

        def pre(self, variable, context):
            log.append((self.label, "pre"))
            return variable

        def stream(self, value, context):
            log.append((self.label, "stream"))
            return value + self.label

        def post(self, value, prompt_value, context):
            log.append((self.label, "post"))
            return value + self.label, prompt_value

    seen = []
    result = lmql.run_sync('"Hi[@a @b @watch X]" where len(TOKENS(X)) < 2', model=MODEL, a=Tracer("a"),
                           b=Tracer("b"), watch=lmql.decorators.streaming(lambda text, context: seen.append(text)))
    text = result.prompt[len("Hi"):]
    assert log == [("a", "pre"), ("b", "pre"), ("b", "stream"), ("a", "stream"), ("b", "stream"), ("a", "stream"),
                   ("b", "post"), ("a", "post")]
    assert result.variables == {"X": text + "ba"}
    assert seen == ["", text]  # watch comes first in stream order: it sees the text itself


def test_decorators_take_arguments_and_dotted_names() -> None:
    def suffix(mark):
        return lambda value: value.strip() + mark

    class tools:  # noqa: N801
        words = staticmethod(lambda value: value.split())

    result = lmql.run_sync('"Once[@suffix(\'!\') A] then[@tools.words B]" where len(TOKENS(A)) < 3 and '
                           'len(TOKENS(B)) < 4', model=MODEL)
    assert result.variables["A"].endswith("!") and result.prompt.startswith("Once" + result.variables["A"])
    assert isinstance(result.variables["B"], list)


def test_decorators_are_evaluated_when_their_statement_runs() -> None:
    @lmql.query(model=MODEL)
    def q():
        '''lmql
        out = []
        for tag in ["<", ">"]:
            mark = lambda value: tag
            "x[@mark V]" where len(TOKENS(V)) < 2
            out.append(V)
        return out
        '''

    assert q() == ["<", ">"]


def test_every_sampled_run_calls_its_post_decorator() -> None:
    calls = []
    result = lmql.run_sync('sample(n=2) "Hi[@record A]" where len(TOKENS(A)) < 3', model=MODEL,
                           record=calls.append)
    assert sorted(calls) == sorted(r.variables["A"] for r in result)


@pytest.mark.parametrize(("source", "error"), [
    ('"Hi[@ X]"', "is not a variable"),  # X is read as the decorator: no name is left
    ('"Hi[@1 X]"', "'@' must be followed by a decorator's name"),
    ('"Hi[@f(1 X]"', "unclosed '\\['"),
    ('"Hi[@f X Y]"', "is not a variable"),
])
def test_a_malformed_decorator_is_a_syntax_error_before_anything_runs(source: str, error: str) -> None:
    with pytest.raises(lmql.QueryError, match=error):
        lmql.query(source)


@pytest.mark.parametrize(("decorator", "kind", "error"), [
    (3, TypeError, "Not a valid decorator expression: 3"),
    (lmql.decorators.pre(lambda variable: (1, "1", "x")), ValueError, "too many values to unpack"),
])
def test_a_decorator_that_cannot_work_raises_as_in_lmql(decorator: object, kind: type, error: str) -> None:
    # LMQL lets the exception through as it is; ours adds a note naming the query line
    with pytest.raises(kind, match=error) as raised:
        lmql.run_sync('"Hi[@d X]" where len(TOKENS(X)) < 2', model=MODEL, d=decorator)
    assert '(raised at query line 1: "Hi[@d X]"' in "\n".join(raised.value.__notes__)
