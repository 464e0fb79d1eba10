"""LMQL programs on lmql-core (lmql-tiny, in-process and served). Expected values come from
transformers (greedy decoding under masks computed here, from LMQL 0.7's rules) or from what a
constraint means; the differential suite against LMQL 0.7.3 itself is in tests/compat."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmql  # noqa: E402
from tests.conftest import run_lmql, the_error  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"


def greedy(reference: tuple[object, object], prompt: str, steps: int, allowed=None) -> list[int]:
    """Greedy tokens after BOS + prompt; ``allowed(ids)`` (a set, or None for any) masks each step."""
    tokenizer = reference[1]
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return greedy_after(reference, ids, steps, allowed)


def greedy_after(reference: tuple[object, object], ids: list[int], steps: int, allowed=None) -> list[int]:
    """Greedy tokens after the token ids ``ids`` (BOS not added), at most ``steps``, to EOS;
    ``allowed`` as in ``greedy``."""
    model, tokenizer = reference
    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1]
        mask = allowed(out) if allowed else None
        if mask is not None:
            banned = torch.ones_like(logits, dtype=torch.bool)
            banned[list(mask)] = False
            logits = logits.masked_fill(banned, -math.inf)
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
    return out


def test_the_docs_example_runs_verbatim_in_process() -> None:
    result = lmql.run_sync('argmax "Hello[WHO]" from lmql.model("local:lmql-tiny") where len(TOKENS(WHO)) < 10')
    assert result.prompt == "Hello" + result.variables["WHO"] and result.variables["WHO"]


@pytest.mark.parametrize("where", ["local", "served"])
def test_a_token_bound_gives_transformers_greedy_continuation(reference, tiny_server, where) -> None:
    model = MODEL if where == "local" else lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    result = lmql.run_sync('argmax "Once upon a time[STORY]" where len(TOKENS(STORY)) < 12', model=model)
    expected = reference[1].decode(greedy(reference, "Once upon a time", 11))
    assert result.variables == {"STORY": expected}
    assert result.prompt == "Once upon a time" + expected


def test_in_list_follows_the_first_token_rule(reference) -> None:
    tokenizer = reference[1]
    options = [" mat", " dog", " table", " floor"]

    def allowed(out: list[int]) -> set[int]:
        text = tokenizer.decode(out)
        rests = [o[len(text):] for o in options if o.startswith(text)]
        mask = {tokenizer(r, add_special_tokens=False)["input_ids"][0] for r in rests if r}
        return mask | ({tokenizer.eos_token_id} if "" in rests else set())

    expected = tokenizer.decode(greedy(reference, "The cat sat on the", 6, allowed))
    result = lmql.run_sync('argmax "The cat sat on the[PLACE]" where PLACE in [" mat", " dog", " table", " floor"]',
                           model=MODEL)
    assert result.variables["PLACE"] == expected and expected in options


def test_stops_at_trims_after_the_phrase_and_stops_before_drops_it(reference) -> None:
    tokenizer = reference[1]
    prompt = "Q: What is the capital of France?\nA:"
    free = tokenizer.decode(greedy(reference, prompt, 30))
    assert "." in free, "the reference continuation must contain the phrase for this test"
    at = lmql.run_sync(f'argmax {prompt!r}"[A]" where STOPS_AT(A, ".") and len(TOKENS(A)) < 31', model=MODEL)
    before = lmql.run_sync(f'argmax {prompt!r}"[A]" where STOPS_BEFORE(A, ".") and len(TOKENS(A)) < 31',
                           model=MODEL)
    assert at.variables["A"] == free[:free.index(".") + 1]
    assert before.variables["A"] == free[:free.index(".")]


def test_int_regex_and_character_bounds_hold() -> None:
    result = lmql.run_sync('''argmax
        "Q: What is two plus two?\\nA: The answer is [N]" where INT(N) and len(TOKENS(N)) < 4
        "\\nCode: [C]" where REGEX(C, r"[0-9]{3}-[a-z]{2}")
        "\\nName:[NAME]" where len(NAME) < 9
    ''', model=MODEL)
    n, code, name = (result.variables[k] for k in ("N", "C", "NAME"))
    assert isinstance(n, int) and f"is {n}\nCode: {code}\nName:{name}" in result.prompt
    import re

    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", code) and len(name) < 9


def test_prompt_time_python_and_earlier_variables() -> None:
    result = lmql.run_sync('''argmax
        "Colors:\\n"
        for i in range(count):
            "{i + 1}. [COLOR]\\n" where STOPS_AT(COLOR, "\\n") and len(TOKENS(COLOR)) < 4
            colors.append(COLOR.strip())
        if len(colors) == count:
            "Done: {', '.join(colors)}[END]" where len(TOKENS(END)) < 2
        return {"colors": colors, "prompt_ends": END}
    ''', model=MODEL, count=2, colors=[])
    assert len(result["colors"]) == 2 and isinstance(result["prompt_ends"], str)


def test_distribution_is_the_softmax_of_mean_logprobs(reference) -> None:
    model, tokenizer = reference
    result = lmql.run_sync('''argmax
        "The cat sat on the[PLACE]"
    from "local:lmql-tiny"
    distribution
        PLACE in [" mat", " dog", " table"]''')
    prompt_ids = [tokenizer.bos_token_id] + tokenizer("The cat sat on the", add_special_tokens=False)["input_ids"]
    means = []
    for value in (" mat", " dog", " table"):
        scored = tokenizer(value, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + scored])).logits[0].log_softmax(-1)
        means.append(sum(float(logits[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(scored)) / len(scored))
    total = math.log(sum(math.exp(m) for m in means))
    probs = [math.exp(m - total) for m in means]
    got = [p for _, p in result.variables["P(PLACE)"]]
    assert got == pytest.approx(probs, abs=1e-4)
    best = (" mat", " dog", " table")[probs.index(max(probs))]
    assert result.variables["PLACE"] == best and result.prompt == "The cat sat on the" + best


def test_decoders_give_lists_of_the_right_shape() -> None:
    sampled = lmql.run_sync('sample(n=3, temperature=0.8) "Once[S]" where len(TOKENS(S)) < 5', model=MODEL)
    beams = lmql.run_sync('beam(n=2) "Once[S]" where len(TOKENS(S)) < 4', model=MODEL)
    assert len(sampled) == 3 and all(isinstance(r.variables["S"], str) for r in sampled)
    assert len(beams) == 2 and beams[0].variables["S"] != beams[1].variables["S"]


def test_decorated_functions_docstring_plain_async_and_F() -> None:
    @lmql.query(model=MODEL)
    def capital(country):
        '''lmql
        "Q: What is the capital of {country}?\nA:[A]" where len(TOKENS(A)) < 4
        return A
        '''

    @lmql.query(model=MODEL)
    async def acapital(country):
        '''lmql
        argmax "Q: What is the capital of {country}?\nA:[A]" where len(TOKENS(A)) < 4
        '''

    @lmql.query(model=MODEL, max_len=24)
    def plain(country):
        "Q: What is the capital of {country}?\nA:[A]"
        return A  # noqa: F821 (a prompt variable)

    summarize = lmql.F("Q: What is the capital of {country}?\nA:[A]", "len(TOKENS(A)) < 4", model=MODEL)
    first = capital("France")
    assert asyncio.run(acapital("France")).variables["A"] == first and first.startswith("\t")
    assert summarize(country="France") == first
    assert plain("France").startswith(first)


@pytest.mark.parametrize("source, message, line", [
    ('argmax\n    "Hi [X"\nfrom "local:lmql-tiny"', "unclosed '['", 2),
    ('argmax\n    "Hi [X]" where len(TOKENS(X)) < 3\n    "{NOPE}"\nfrom "local:lmql-tiny"',
     "Failed to resolve variable 'NOPE' in LMQL query", 3),
    ('argmax\n    "Hi [X]" where X.startswith("a")\nfrom "local:lmql-tiny"', "cannot be enforced", 2),
    ('argmax\n    "Hi [X]"\nfrom "local:lmql-tiny"\nwhere not STOPS_AT(X, ".")',
     "the constraint 'not STOPS_AT(X, '.')' cannot be enforced", 4),
    ('argmax\n    x = = 1\n    "Hi [X]"\nfrom "local:lmql-tiny"', "invalid syntax", 2),
])
def test_bad_programs_fail_with_one_error_naming_the_line(source, message, line) -> None:
    with pytest.raises(lmql.QueryError) as raised:
        lmql.run_sync(source)
    assert message in str(raised.value) and f"query line {line}" in str(raised.value)
    error = raised.value  # no chained exception from our internals is shown with it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_an_unsupported_constraint_fails_before_any_generation() -> None:
    unreachable = lmql.model("lmql-tiny", endpoint="127.0.0.1:9")  # nothing listens: any request fails
    with pytest.raises(lmql.QueryError, match="cannot be enforced"):
        lmql.run_sync('argmax "Hi [X]" where X.upper() == "A"', model=unreachable)


def test_without_a_model_the_error_says_how_to_name_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmql_core.api

    monkeypatch.setattr(lmql_core.api, "_default_model", None)
    with pytest.raises(lmql.QueryError, match="no model for this query"):
        lmql.run_sync('argmax "Hi [X]" where len(TOKENS(X)) < 3')
    lmql.set_default_model(MODEL)
    assert lmql.run_sync('argmax "Hi [X]" where len(TOKENS(X)) < 3').prompt.startswith("Hi ")


def test_lmql_run_cli_runs_a_file_with_inputs(tmp_path: Path) -> None:
    query = tmp_path / "capital.lmql"
    query.write_text(textwrap.dedent('''\
        argmax
            "Q: What is the capital of {country}?\\nA:[A]" where len(TOKENS(A)) < 4
        from "local:lmql-tiny"
    '''))
    done = run_lmql("run", str(query), "--country", "France", timeout=240)
    assert done.returncode == 0, done.stderr
    assert "Q: What is the capital of France?" in done.stdout and "A = " in done.stdout
    assert ("Failed to resolve variable 'country' in LMQL query: it is an input of the query; pass it on the "
            f"command line: lmql run {query} --country VALUE") in the_error(run_lmql("run", str(query), timeout=240))



def test_int_keeps_ascii_digits_only_as_lmql_does() -> None:
    # LMQL 0.7.3, ops.py IntOp: postprocess keeps the characters in "0123456789"; forward drops one
    # leading space and then accepts 0-9 only (Unicode digits such as Arabic-Indic ones are not).
    from lmql_core.constraints.kinds import IsInt
    from lmql_core.query.runtime import postprocess

    where = IsInt()
    assert postprocess(where, "N", " 4\u0663 2.") == ("42", 42)
    with pytest.raises(lmql.QueryError, match="without a digit"):
        postprocess(where, "N", " \u0663\u0664")
    assert where.holds(" 12", None)  # type: ignore[arg-type]
    assert not where.holds("\u0663", None)  # type: ignore[arg-type]
    assert not where.holds("  12", None)  # type: ignore[arg-type]
    assert not where.holds("", None)  # type: ignore[arg-type]


def test_compiled_conditions_live_only_as_long_as_their_queries() -> None:
    """A server that builds a query per request keeps the parsed where clauses of the last 256
    only (parse_where's cache): their compiled conditions go with them."""
    import gc

    from lmql_core.query import constraints, where

    where.parse_where.cache_clear()
    gc.collect()
    held = len(constraints._compiled)
    for i in range(12):
        lmql.run_sync(f'''argmax
            "Number {i}:[X]" where len(TOKENS(X)) < 2 and limit > {i}
        ''', model=MODEL, limit=100)
    assert len(constraints._compiled) >= held + 12  # each query's condition compiled once
    where.parse_where.cache_clear()
    gc.collect()
    assert len(constraints._compiled) <= held


def test_vocabularies_of_tokenizers_no_longer_used_are_let_go() -> None:
    """The vocabularies of the last few tokenizers are kept (a program's masks are computed once
    per model); an older tokenizer is freed once nothing else holds it."""
    import gc
    import weakref

    from lmql_core.loading.tokenizer import BytesTokenizer
    from lmql_core.query.vocabulary import CACHED_VOCABULARIES, Vocabulary

    first = BytesTokenizer(vocab_size=300)
    vocabulary = Vocabulary.of(first)
    assert Vocabulary.of(first) is vocabulary and vocabulary.texts[104] == "h"
    freed = weakref.ref(first)
    del first, vocabulary
    for _ in range(CACHED_VOCABULARIES):
        Vocabulary.of(BytesTokenizer(vocab_size=300))
    gc.collect()
    assert freed() is None


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_query_reads_its_modules_globals_when_called(tmp_path: Path) -> None:
    # LMQL looks names up when the query runs: a helper defined below the query, or rebound later, counts
    (tmp_path / "lmql_app.py").write_text(textwrap.dedent('''
        import lmql

        @lmql.query(model="local:lmql-tiny")
        def greet():
            \'\'\'lmql
            "{salutation()} {NAME}:[X]" where len(TOKENS(X)) < 2
            return context.prompt
            \'\'\'

        def salutation():
            return "Dear"

        NAME = "Ada"
        from_source = lmql.query('"{NAME}[X]" where len(TOKENS(X)) < 2', is_async=False,
                                 model="local:lmql-tiny")
    '''))
    module = _import(tmp_path / "lmql_app.py")  # named like lmql's own modules, which it is not
    assert module.greet().startswith("Dear Ada:")
    module.NAME = "Grace"
    assert module.greet().startswith("Dear Grace:")
    assert module.from_source().prompt.startswith("Grace")


@lmql.query(model="local:lmql-tiny")
def returns_a_free_name():
    '''lmql
    argmax
        return s, len(s)
    '''


def test_a_query_function_takes_names_it_reads_by_keyword() -> None:
    # LMQL: a name the body reads that is not a parameter may be given by keyword; given nowhere,
    # it is LMQL's TypeError
    assert returns_a_free_name(s="test") == [("test", 4)]  # no variable met: LMQL's one-element list
    with pytest.raises(TypeError, match="Failed to resolve variable 's'"):
        returns_a_free_name()
    with pytest.raises(lmql.QueryError, match="unknown argument 'nope'"):
        returns_a_free_name(s="x", nope=1)


def test_a_sync_query_call_inside_a_coroutine_is_refused_as_in_lmql() -> None:
    async def inside() -> None:
        with pytest.raises(lmql.QueryError, match="cannot be called synchronously from within an async context"):
            lmql.run_sync('argmax "Hi[X]" where len(TOKENS(X)) < 2', model="local:lmql-tiny")
        with pytest.raises(lmql.QueryError, match="cannot be called synchronously"):
            returns_a_free_name(s="x")
        assert (await lmql.run('argmax\n    return s', s="ok", model="local:lmql-tiny")) == ["ok"]

    asyncio.run(inside())


def test_an_exception_of_the_querys_own_python_goes_through_as_it_is(tmp_path: Path) -> None:
    # LMQL lets it through (code catching AssertionError around a query works); ours names the line
    source = 'argmax\n    "Hi[X]" where len(TOKENS(X)) < 2\n    assert X == "never", "not this one"\n'
    with pytest.raises(AssertionError, match="not this one") as raised:
        lmql.run_sync(source, model="local:lmql-tiny")
    assert raised.value.__notes__ == ['(raised at query line 3: assert X == "never", "not this one")']
    query = tmp_path / "fails.lmql"
    query.write_text(source)
    error = the_error(run_lmql("run", str(query), "--model", "local:lmql-tiny", timeout=240))
    assert error == ('Error: AssertionError: not this one (raised at query line 3: assert X == "never", '
                     '"not this one")')


def test_int_that_ends_without_a_digit_is_a_value_error_as_in_lmql() -> None:
    # LMQL's docs (scripted prompting): lmql-tiny's one INT token is a space here, and LMQL's
    # int() of the value raises ValueError
    source = (
        'argmax\n    """\n    Write a summary of Bruno Mars, the singer:\n    {{\n'
        '      "name": "[STRING_VALUE]",\n      "age": [INT_VALUE],\n    }}\n    """\n'
        'where\n    STOPS_BEFORE(STRING_VALUE, \'"\') and INT(INT_VALUE) and len(TOKENS(INT_VALUE)) < 2')
    with pytest.raises(ValueError, match="INT\\(INT_VALUE\\) ended without a digit"):
        lmql.run_sync(source, model="local:lmql-tiny")
