"""The query language as LMQL 0.7.3 reads it (issue 27: points 2, 3, 10, 14, 15, 17), on lmql-tiny.

What LMQL 0.7.3 does comes from its source: ``language/fragment_parser.py`` (keywords compared
lower-cased, the prologue before the first decoder keyword, a ``where`` right after a prompt string
belongs to that statement), ``runtime/lmql_runtime.py`` (an unresolved name fails the call with
``TypeError: Failed to resolve variable ...``) and ``ops/ops.py`` (``InOpStrInStr`` and ``NotOp``:
the masks of ``s in V`` and ``not s in V``). Masked greedy continuations are computed here with
transformers; the same programs run against LMQL 0.7.3 itself in tests/compat/queries_syntax.py.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmql  # noqa: E402
from lmql_core.query.errors import QuerySyntaxError  # noqa: E402
from tests.conftest import run_lmql, the_error  # noqa: E402
from tests.test_query import greedy  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"
UNREACHABLE = "127.0.0.1:9"  # nothing listens: a query that reaches its model fails differently


def run(source: str, **inputs: object) -> lmql.LMQLResult:
    return lmql.run_sync(source, model=MODEL, **inputs)


# -- 2: upper-case clause keywords ---------------------------------------------------------------

def test_upper_case_clause_keywords_mean_the_lower_case_ones() -> None:
    lower = run('argmax\n    "Q: Is the sky blue?\\nThink:[T]\\nA:[A]"\nfrom\n    "local:lmql-tiny"\n'
                'where\n    len(TOKENS(T)) < 4\ndistribution\n    A in [" yes", " no"]')
    upper = run('argmax\n    "Q: Is the sky blue?\\nThink:[T]\\nA:[A]"\nFROM\n    "local:lmql-tiny"\n'
                'WHERE\n    len(TOKENS(T)) < 4\nDISTRIBUTION\n    A in [" yes", " no"]')
    assert len(lower.variables["T"]) > 0 and lower.variables["A"] in (" yes", " no")
    assert (upper.prompt, upper.variables["T"], upper.variables["A"]) == \
        (lower.prompt, lower.variables["T"], lower.variables["A"])
    probabilities = [p for _, p in lower.variables["P(A)"]]
    assert [p for _, p in upper.variables["P(A)"]] == pytest.approx(probabilities, abs=1e-5)


@pytest.mark.parametrize("prologue", ["", "x = 1\n"])
def test_upper_case_decoder_keywords_are_refused_as_in_lmql(prologue: str) -> None:
    # LMQL 0.7.3 reads ARGMAX as the decoder keyword, then fails to resolve it as a decoder
    with pytest.raises(lmql.QueryError, match="decoder keywords are lower case, as in LMQL: write 'argmax', "
                                              "not 'ARGMAX'"):
        run(prologue + 'ARGMAX "Hello[WHO]" WHERE len(TOKENS(WHO)) < 4')


# -- 3: a prologue before the decoder ------------------------------------------------------------

def test_python_before_the_decoder_runs_once_as_module_code() -> None:
    source = '''import re
calls = []
def louder(text):
    calls.append(text)
    return re.sub("[aeiou]", "*", text)
limit = 5
argmax
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < limit
    return [louder(STORY), len(calls)]'''
    plain = run('argmax "Once upon a time[STORY]" where len(TOKENS(STORY)) < 5')
    story = plain.variables["STORY"]
    import re

    assert run(source) == [re.sub("[aeiou]", "*", story), 1]
    query = lmql.query(source, is_async=False)
    assert query(model=MODEL) == [re.sub("[aeiou]", "*", story), 1]
    assert query(model=MODEL) == [re.sub("[aeiou]", "*", story), 2]  # the prologue ran once: one list


def test_a_prologue_of_a_query_without_a_decoder_is_its_body() -> None:
    assert run('limit = 3\n"Hello[WHO]" where len(TOKENS(WHO)) < limit').variables == \
        run('"Hello[WHO]" where len(TOKENS(WHO)) < 3').variables


# -- 14: backslash continuations -----------------------------------------------------------------

@pytest.mark.parametrize("source", [
    '"Greet the user in four different ways: [GREETINGS]" \\\n   where len(TOKENS(GREETINGS)) < 10',
    'argmax "Greet the user in four different ways: [GREETINGS]" \\\n    where len(TOKENS(GREETINGS)) < 10',
    'argmax "Greet the user in four different ways: [GREETINGS]" from "local:lmql-tiny" \\\n'
    'where len(TOKENS(GREETINGS)) < 10',
    'argmax "Greet the user in four different ways: [GREETINGS]" where \\\n    len(TOKENS(GREETINGS)) < 10',
])
def test_a_backslash_continues_the_prompt_into_its_where(source: str) -> None:
    one_line = run('"Greet the user in four different ways: [GREETINGS]" where len(TOKENS(GREETINGS)) < 10')
    assert one_line.variables["GREETINGS"]
    assert run(source).variables == one_line.variables


def test_a_where_right_after_the_last_prompt_string_is_that_statements_own() -> None:
    # LMQL: the second where follows a string, so it constrains B alone; A is " red" (A's own where),
    # and as " red" holds an "e", B may only end at once
    result = run('argmax\n    "Pick:[A]" where A in [" red", " blue"]\n'
                 '    "\\nAgain:[B]" where not "e" in A and len(TOKENS(B)) < 3')
    assert result.variables == {"A": " red", "B": ""}


# -- 15: negations and substrings ----------------------------------------------------------------

def _without(tokenizer: object, phrase: str):
    """LMQL's mask for ``not phrase in V``: no token holding the rest of the phrase that V's end
    has not begun (ops.py InOpStrInStr.follow under NotOp)."""
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]

    def allowed(out: list[int]) -> set[int]:
        text = tokenizer.decode(out)
        overlap = max((i for i in range(1, len(phrase)) if text.endswith(phrase[:i])), default=0)
        rest = phrase[overlap:]
        return {i for i, t in enumerate(texts) if rest not in t or i == tokenizer.eos_token_id}

    return allowed


@pytest.mark.parametrize("phrase, steps", [("\n", 40), ("e", 13), (" ", 9), ("ou", 13)])
def test_not_phrase_in_masks_tokens_as_lmql(reference, phrase: str, steps: int) -> None:
    tokenizer = reference[1]
    free = tokenizer.decode(greedy(reference, "Once upon a time", steps))
    expected = tokenizer.decode(greedy(reference, "Once upon a time", steps, _without(tokenizer, phrase)))
    assert phrase in free and phrase not in expected, "the constraint must change this continuation"
    result = run(f'argmax "Once upon a time[X]" where len(TOKENS(X)) < {steps + 1} and not {phrase!r} in X')
    assert result.variables["X"] == expected


def test_the_readme_constraint_with_stops_at(reference) -> None:
    tokenizer = reference[1]
    allowed = _without(tokenizer, "\n")
    expected = tokenizer.decode(greedy(reference, "Greet LMQL:", 40, allowed))
    expected = expected[:expected.index(".") + 1] if "." in expected else expected
    result = run('"Greet LMQL:[GREETINGS]\\n" where stops_at(GREETINGS, ".") and not "\\n" in GREETINGS '
                 'and len(TOKENS(GREETINGS)) < 41')
    assert result.variables["GREETINGS"] == expected and "\n" not in expected


def test_phrase_in_only_keeps_the_variable_from_ending_without_it(reference) -> None:
    tokenizer = reference[1]
    free = greedy(reference, "Q: Hi. A:", 30)
    assert len(free) < 24 and "x" not in tokenizer.decode(free), "lmql-tiny ends this one early, without 'x'"
    # LMQL: s in V masks no token, and EOS only while V lacks s
    no_eos = set(range(len(tokenizer))) - {tokenizer.eos_token_id}
    expected = greedy(reference, "Q: Hi. A:", 24, lambda out: no_eos)
    result = run('argmax "Q: Hi. A:[X]" where len(TOKENS(X)) < 25 and "x" in X')
    assert result.variables["X"] == tokenizer.decode(expected)


def test_negated_length_bounds_are_their_complements() -> None:
    assert run('argmax "Once upon a time[X]" where not len(TOKENS(X)) < 3 and len(TOKENS(X)) < 6').variables == \
        run('argmax "Once upon a time[X]" where len(TOKENS(X)) >= 3 and len(TOKENS(X)) < 6').variables
    assert run('argmax "Once upon a time[X]" where not len(TOKENS(X)) > 3').variables == \
        run('argmax "Once upon a time[X]" where len(TOKENS(X)) <= 3').variables


def test_not_in_and_not_equal_read_as_their_not_forms() -> None:
    # LMQL 0.7.3 refuses X not in [...] and X != s ("operator ... is not supported"); ours reads them
    # as not X in [...] and not X == s, which it enforces
    list_query = 'argmax "The cat sat on the[P]" where P in [" mat", " dog", " table"] and {}'
    assert run(list_query.format('P not in [" mat"]')).variables == \
        run(list_query.format('not P in [" mat"]')).variables
    assert run(list_query.format('P != " mat"')).variables == run(list_query.format('not P == " mat"')).variables


def test_an_unenforceable_negation_is_named_whole() -> None:
    with pytest.raises(lmql.QueryError, match=r"the constraint 'not X.startswith\('a'\)' cannot be enforced"):
        run('argmax "Hi [X]" where not X.startswith("a")')
    with pytest.raises(lmql.QueryError, match=r"the constraint 'not STOPS_AT\(X, '.'\)' cannot be enforced: "
                                              r"'not' negates"):
        run('argmax "Hi [X]" where not STOPS_AT(X, ".")')


# -- 10 and 17: inputs, checked when called and before any model ---------------------------------

def test_a_file_of_queries_imports_though_one_constrains_a_variable_it_never_generates(tmp_path: Path) -> None:
    module = tmp_path / "syntax_queries_module.py"
    module.write_text(textwrap.dedent('''\
        import lmql

        @lmql.query(model="local:lmql-tiny")
        def broken():
            \'\'\'lmql
            argmax
                "Hello[WHO]" where STOPS_AT(NOT_A_VARIABLE, ".") and len(TOKENS(WHO)) < 4
            \'\'\'

        @lmql.query(model="local:lmql-tiny")
        def fine():
            \'\'\'lmql
            argmax
                "Hello[WHO]" where len(TOKENS(WHO)) < 4
                return WHO
            \'\'\'
    '''))
    spec = importlib.util.spec_from_file_location(module.stem, module)
    queries = importlib.util.module_from_spec(spec)
    sys.modules[module.stem] = queries
    spec.loader.exec_module(queries)  # defining both works
    assert queries.fine() == run('argmax "Hello[WHO]" where len(TOKENS(WHO)) < 4').variables["WHO"]
    with pytest.raises(TypeError, match="Failed to resolve variable 'NOT_A_VARIABLE' in LMQL query"):
        queries.broken()


@pytest.mark.parametrize("source, names, line", [
    ('argmax "Hello {name}[WHO]" where len(TOKENS(WHO)) < 4', "variable 'name'", 1),
    ('argmax\n    "Hello[WHO]" where len(TOKENS(WHO)) < limit', "variable 'limit'", 2),
    ('argmax\n    "Hi[A]" where len(TOKENS(A)) < 3\n    "{a + b}[WHO]" where STOPS_AT(WHO, stop)',
     "variables in LMQL query: 'a', 'b', 'stop'", 3),
])
def test_a_missing_input_is_a_type_error_naming_it_before_the_model_is_reached(source, names, line) -> None:
    unreachable = lmql.model("lmql-tiny", endpoint=UNREACHABLE)
    with pytest.raises(TypeError, match=f"Failed to resolve {names}") as raised:
        lmql.run_sync(source, model=unreachable)
    assert "pass " in str(raised.value) and "=..." in str(raised.value) and f"query line {line}" in str(raised.value)


def test_names_the_query_defines_itself_are_not_inputs() -> None:
    result = run('''argmax
    import math
    words = [w for w in ["a", "b"]]
    total = 0
    for i, w in enumerate(words):
        total += i
    def double(x):
        return 2 * x
    try:
        pass
    except ValueError as error:
        print(error)
    "Hello[WHO]" where len(TOKENS(WHO)) < 3
    return [math.floor(1.5), double(total), WHO == WHO]''')
    assert result == [1, 2, True]


@pytest.mark.parametrize("source, message", [
    ('argmax\n    "Hi [X]" where len(TOKENS(X)) < 3\n    x = = 1\nfrom "local:no-such-model"', "invalid syntax"),
    ('argmax\n    "Hi [X]" where len(TOKENS(X)) < 3\n    break\nfrom "local:no-such-model"', "'break' outside loop"),
    ('argmax\n    "Hi [X" where len(TOKENS(X)) < 3\nfrom "local:no-such-model"', "unclosed '['"),
])
def test_syntax_errors_come_before_the_model_loads(source: str, message: str) -> None:
    # the model does not exist: an error from loading it would mean the query was read after it
    with pytest.raises(QuerySyntaxError, match=re.escape(message)):
        lmql.run_sync(source)


def test_lmql_run_checks_inputs_and_syntax_before_loading_the_model(tmp_path: Path) -> None:
    query = tmp_path / "greet.lmql"
    query.write_text('argmax\n    "Hello {name}, I am[X]" where len(TOKENS(X)) < 4\n')
    started = time.monotonic()
    error = the_error(run_lmql("run", str(query), "--model", MODEL, timeout=240))
    assert error.endswith(f"Failed to resolve variable 'name' in LMQL query: it is an input of the query; "
                          f"pass it on the command line: lmql run {query} --name VALUE (query line 2: "
                          '"Hello {name}, I am[X]" where len(TOKENS(X)) < 4)')
    broken = tmp_path / "broken.lmql"
    broken.write_text('argmax\n    "Hello[X]" where len(TOKENS(X)) < 4\n    x = = 1\n')
    assert "invalid syntax" in the_error(run_lmql("run", str(broken), "--model", MODEL, timeout=240))
    assert time.monotonic() - started < 20, "both failed without loading the model"
