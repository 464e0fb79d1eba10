"""Nested queries, queries called or defined in a query's body, query methods and ``context``
(issue 27, points 4 and 7), on lmql-tiny in process. Every expected value is what LMQL 0.7.3
gives for the same program on the same model (its run of a copy of lmql-tiny, `local:` on both
sides); the differential suite (tests/compat/queries_nested.py) checks the same forms served."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmql  # noqa: E402
from lmql_core.query.errors import QueryError  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"


@lmql.query
def chain_of_thought():
    '''lmql
    "A: Let's think step by step. [ANSWER]" where len(TOKENS(ANSWER)) < 4
    return ANSWER.strip()
    '''


@lmql.query
def items_list(n: int):
    '''lmql
    for i in range(n):
        "-[ITEM]\n" where STOPS_AT(ITEM, "\n") and len(TOKENS(ITEM)) < 3
    '''


@lmql.query
def one_of(choices: list):
    '''lmql
    "Among {choices}, what do you consider \
    most likely? [ANSWER]" where ANSWER in choices
    return ANSWER
    '''


@lmql.query
def cot_one_of(choices: list):
    '''lmql
    "A: Let's think step by step. [ANSWER: one_of(choices)]" where len(TOKENS(ANSWER)) < 4
    return ANSWER.strip()
    '''


@lmql.query
def think():
    '''lmql
    "A: Let's think step by step. [ANSWER]"
    return ANSWER.strip()
    '''


@lmql.query
def think_aloud():
    '''lmql
    "A: Let's think. [ANSWER]"
    '''


@lmql.query
def musing():
    '''lmql
    "Think: [ANSWER]" where len(TOKENS(ANSWER)) < 8
    return ANSWER.strip()
    '''


@lmql.query
def musing_text():
    '''lmql
    "Think: [ANSWER]" where len(TOKENS(ANSWER)) < 8
    '''


@lmql.query
def two():
    '''lmql
    "First: [A]" where len(TOKENS(A)) < 3
    " Second: [B]" where len(TOKENS(B)) < 3
    return A + "|" + B
    '''


def run(source: str):
    return lmql.run_sync(source, model=MODEL)


def test_a_nested_query_continues_the_prompt_and_leaves_only_its_return_value() -> None:
    result = run('''argmax
    "Q: It is August 12th, 2020. What date was it 100 days ago? [ANSWER: chain_of_thought]"
    "\\nSo:[X]" where len(TOKENS(X)) < 3''')
    assert result.variables == {"ANSWER": "The\nW", "X": "  The"}
    assert result.prompt == "Q: It is August 12th, 2020. What date was it 100 days ago? The\nW\nSo:  The"


def test_a_nested_query_without_return_leaves_its_whole_text() -> None:
    result = run('''argmax
    "A list of things:\\n[ITEMS: items_list(2)]"
    "Done[X]" where len(TOKENS(X)) < 3''')
    assert result.variables == {"ITEMS": '- "F\n-lo\n', "X": '"\n'}  # the inner ITEMs are not the outer's
    assert result.prompt == 'A list of things:\n- "F\n-lo\nDone"\n'


def test_nested_query_arguments_and_two_nested_variables_in_one_string() -> None:
    result = run('''argmax
    "Q: What is the capital of France? [ANSWER: one_of(['Berlin', 'Paris', 'London'])]"
    "\\nSo[X]" where len(TOKENS(X)) < 3''')
    assert result.variables == {"ANSWER": "Paris", "X": " the light"}
    both = run('''argmax
    "Q: [A: one_of(['x', 'y'])] and [B: one_of(['Berlin', 'Paris'])]"''')
    assert (both.prompt, both.variables) == ("Q: x and Paris", {"A": "x", "B": "Paris"})


@pytest.mark.parametrize("nested, where, value", [
    # the inner variable ends when the outer bound (counted from where ANSWER began) is reached
    ("think", "len(TOKENS(ANSWER)) < 14", ""),
    # the inner prompt's "." ends ANSWER there: the inner variable takes the text so far
    ("think", 'STOPS_AT(ANSWER, ".")', "A: Let's think step by step."),
    # ended inside the inner prompt, without a return value: the prompt, then the text so far
    ("think_aloud", "len(TOKENS(ANSWER)) < 3", "A: Let's think. A: Let's think."),
])
def test_constraints_on_the_outer_variable_hold_over_the_inner_run(nested: str, where: str, value: str) -> None:
    result = run(f'argmax "Q: What is two plus two? [ANSWER: {nested}]" where {where}')
    assert result.variables == {"ANSWER": value}
    assert result.prompt == "Q: What is two plus two? " + value


@pytest.mark.parametrize("nested, where, value", [
    # the outer phrase in the inner run's last token: ANSWER is the run's text cut there, with
    # or without a return value
    ("musing", 'STOPS_AT(ANSWER, "e")', "Think:  Isaac Ne"),
    ("musing_text", 'STOPS_AT(ANSWER, "e")', "Think:  Isaac Ne"),
    # the bound ends the inner query's first variable; the second is empty; the return value stays
    ("two", "len(TOKENS(ANSWER)) < 6", " I|"),
    ("two", "True", " I'm| I'm"),
])
def test_outer_constraints_while_the_inner_query_generates(nested: str, where: str, value: str) -> None:
    result = run(f'argmax "Q: Tell me a story. [ANSWER: {nested}]" where {where}')
    assert result.variables == {"ANSWER": value}


def test_a_nested_query_inside_a_nested_query() -> None:
    result = run('''argmax "The answer is [ANSWER: cot_one_of(['Hello', 'Greetings'])]"''')
    assert result.variables == {"ANSWER": "Among ['Hello', 'Greetings'], what do you consider most likely?"}


class Asker:
    def __init__(self) -> None:
        self.a = 7

    @lmql.query
    def number(self):
        '''lmql
        "Number {self.a}:[N]" where len(TOKENS(N)) < 3
        return N.strip()
        '''

    @lmql.query(model=MODEL)
    async def explain(self):
        '''lmql
        "Why {self.a}? [N]" where len(TOKENS(N)) < 3
        '''

    @lmql.query(model=MODEL)
    def ask(self):
        '''lmql
        "Q:[A: self.number]"
        r = await self.explain()
        return [A, r.prompt, r.variables["N"], context.prompt]
        '''


class HoldsAnF:
    say = lmql.F("Say this is a test:[R]", "len(TOKENS(R)) < 5", model=MODEL)


def test_query_methods_bind_self_as_a_type_and_when_called() -> None:
    assert Asker().ask() == ["No", "Why 7?  I'm", " I'm", "Q:No"]
    assert Asker().number(model=MODEL) == "A"  # called alone: its prompt starts the text
    assert Asker.number(Asker(), model=MODEL) == "A"  # from the class, self given
    # a query from source has no parameter for self: an instance's attribute is the same query
    assert HoldsAnF().say() == HoldsAnF.say()


@lmql.query(model=MODEL)
def defines_a_query():
    '''lmql
    @lmql.query
    async def inner(x):
        """lmql
        "Inner {x}:[Y]" where len(TOKENS(Y)) < 3
        return Y.upper()
        """
    "Outer:[Z: inner('q')]\n"
    r = inner("z", model=MODEL)
    return [Z, r, context.prompt]
    '''


def test_a_query_defined_inside_a_query_runs_nested_and_called() -> None:
    assert defines_a_query() == ["  WHAT", "      ", "Outer:  WHAT\n"]


@lmql.query(model=MODEL)
async def word(prefix):
    '''lmql
    "{prefix}[W]" where len(TOKENS(W)) < 3
    return W
    '''


@lmql.query(model=MODEL)
def word_sync(prefix):
    '''lmql
    "{prefix}[W]" where len(TOKENS(W)) < 3
    return W
    '''


@lmql.query(model=MODEL)
async def phrase(prefix):
    '''lmql
    "{prefix}[W]" where len(TOKENS(W)) < 3
    '''


@lmql.query(model=MODEL)
def caller():
    '''lmql
    a = word("Once upon")
    b = await phrase("The cat")
    c = phrase("The dog")
    same = word_sync("Once upon")
    "Start: {a}[X]" where len(TOKENS(X)) < 3
    return [a, b.prompt, b.variables, c.variables["W"], X, context.prompt, same]
    '''


def test_queries_called_from_a_body_are_awaited_with_or_without_await() -> None:
    # LMQL 0.7.3 gives all but the last; a sync query called there fails on LMQL ("cannot be
    # called synchronously from within an async context") and runs on ours, as its async twin
    assert caller() == [" a m", "The cat is a", {"W": " is a"}, " is a", "ale of", "Start:  a male of", " a m"]


@lmql.query(model=MODEL)
async def gathers():
    '''lmql
    import asyncio
    a, b = await asyncio.gather(word("Once upon"), phrase("The cat"))
    return [a, b.prompt]
    '''


def test_asyncio_calls_in_a_body_take_the_queries_unawaited() -> None:
    # not LMQL's (it awaits each query before gather sees it, and fails); the values are LMQL's
    # for each query run alone
    assert asyncio.run(gathers()) == [[" a m", "The cat is a"]]  # no variable met: LMQL's list


@lmql.query(model=MODEL)
def with_context():
    '''lmql
    before = context.prompt
    "Hello[X]" where len(TOKENS(X)) < 3
    v = context.get_var("X")
    every = context.get_all_vars()
    w = await context.get_var("X")
    s = context.score([" a", " b"])
    "! Then[Y]" where len(TOKENS(Y)) < 3
    missing = context.get_var("Z")
    return [before, v, every, w, type(context).__name__, s.argmax(), [round(x, 3) for x in s.scores()],
            context.prompt, missing, context.get_return_value().prompt]
    '''


def test_context_in_a_query_body() -> None:
    assert with_context() == ["", ", n", {"X": ", n"}, ", n", "LMQLContext", " a", [-9.266, -10.3],
                              "Hello, n! Then I don", None, "Hello, n! Then I don"]


def test_num_calls_counts_model_calls_from_zero_and_setters_change_nothing_mid_run() -> None:
    # interpreter.py LMQLContext: num_calls is the decoder model's uncached calls (0 before any
    # variable; LMQL 0.7.3 gives 0, 2, 5 here); set_model/set_decoder/set_where_clause only store
    # what the interpreter read before the body began, so the second variable is still greedy
    # under its own bound (LMQL 0.7.3: the same values as without the calls); set_model makes
    # a new decoder model that the running decoder never calls: num_calls is 0 after it
    counts = run('''argmax
    a = context.num_calls
    "Hello[WHO]" where len(TOKENS(WHO)) < 4
    b = context.num_calls
    context.set_decoder("sample", temperature=0.5)
    context.set_where_clause(None)
    context.set_distribution("X", ["a", "b"])
    c = context.num_calls
    "And[X]" where STOPS_AT(X, ".") and len(TOKENS(X)) < 12
    d = context.num_calls
    context.set_model("local:no-such-model")
    "And[Y]" where len(TOKENS(Y)) < 3
    return [a, b, c, d, context.num_calls, WHO, X, Y]''')
    plain = run('''argmax
    "Hello[WHO]" where len(TOKENS(WHO)) < 4
    "And[X]" where STOPS_AT(X, ".") and len(TOKENS(X)) < 12
    "And[Y]" where len(TOKENS(Y)) < 3''')
    a, b, c, d, e = counts[:5]
    assert a == 0 < b == c < d and e == 0
    assert counts[5:] == [plain.variables["WHO"], plain.variables["X"], plain.variables["Y"]]


def test_a_string_type_is_a_regular_expression() -> None:
    result = run('''argmax
    pattern = "[0-9][0-9]"
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 [N: pattern] and[X]" where len(TOKENS(X)) < 3''')
    assert result.variables == {"N": "05", "X": " 10%"}


@lmql.query
def with_its_own_model():
    '''lmql
    sample(temperature=0.9)
        "Say[S]" where len(TOKENS(S)) < 3
    from
        "local:no-such-model"
    '''


def test_a_nested_querys_own_model_and_decoder_are_ignored_with_a_warning() -> None:
    with pytest.warns(UserWarning) as warned:
        result = run('argmax "Q:[A: with_its_own_model]"')
    assert [str(w.message) for w in warned] == [  # LMQL 0.7.3's words
        "warning: the specified model of nested query 'with_its_own_model' is ignored. Nested queries "
        "cannot specify their own model.",
        "warning: the decoder configuration of nested query 'with_its_own_model' is ignored. Nested "
        "queries cannot specify their own decoder."]
    assert result.variables == {"A": "Say the t"}  # the outer model, greedy (LMQL 0.7.3's value)


@pytest.mark.parametrize("hole, message", [
    ("[X: 3]", "[X: 3]: not a valid type; use int, a regular expression string or a query function"),
    ("[X: nowhere]", "[X: nowhere]: NameError: name 'nowhere' is not defined"),
    ("[X: one_of(*pair)]", "write the nested query's arguments one by one"),
    ("[X: one_of(]", "[X: one_of(]: the type is not a Python expression"),
    ("[X: one_of()]", "[X: one_of(...)]: missing a required argument: 'choices'"),
    ("[X: one_of(pair, 2)]", "[X: one_of(...)]: too many positional arguments"),
])
def test_a_type_that_is_not_one_fails_naming_the_variable(hole: str, message: str) -> None:
    with pytest.raises(QueryError) as error:
        run(f'argmax\n    pair = ["a", "b"]\n    "Q: {hole}"')
    assert message in str(error.value)
    assert "line 3" in str(error.value)


@lmql.query(model=MODEL)
def reads_its_frame():
    '''lmql
    x = 5
    names = sorted(n for n in dir() if not n.startswith("__"))
    return [names, vars()["x"], [len(str(i)) for i in range(3)]]
    '''


def test_builtins_that_read_their_callers_frame_see_the_query_body() -> None:
    # every other call in a body goes through the runtime's call(); these must not
    # a program that meets no variable gives its result in a list, as LMQL 0.7.3
    assert reads_its_frame() == [[["x"], 5, [1, 1, 1]]]
