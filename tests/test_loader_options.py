"""Typed loader options: a backend declares them; the core checks and converts what users pass
(`lmql serve-model NAME --key value`, `lmql.model("local:NAME", key=value)`) before loading."""

from __future__ import annotations

import asyncio
import importlib.util
import math

import pytest

import lmql
from lmql_core.base.options import LoaderOptions, Option
from lmql_core.errors import LMQLError
from tests.conftest import Server, run_lmql, server_metric, the_error

COUNTING_OPTIONS = ("its options: --fail_on (int | None), --scores (bool), --leave_out (str | None); "
                    "the engine's: --max_batch (int), --token_budget (int)")
needs_example = pytest.mark.skipif(importlib.util.find_spec("lmql_example_backend") is None,
                                   reason="pip install ./tests/plugin_example")
needs_hf = pytest.mark.skipif(importlib.util.find_spec("lmql_hf") is None, reason="needs lmql-hf")


@pytest.mark.parametrize(("kind", "value", "expected"), [
    (int, "8", 8), (int, 8, 8), (float, "0.5", 0.5), (float, 2, 2.0), (bool, "False", False),
    (bool, True, True), (int | None, "none", None), (int | None, "3", 3), (bool | str, "true", True),
    (bool | str, "max-autotune", "max-autotune"), (str, "123", "123"), (dict, '{"0": "2GiB"}', {"0": "2GiB"}),
])
def test_an_option_converts_text_and_keeps_fitting_values(kind: object, value: object, expected: object) -> None:
    converted = Option(kind).convert(value)
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize(("kind", "value"), [(int, "8.5"), (int, 8.5), (int, True), (float, "fast"),
                                             (bool, "yes"), (bool, 1), (str, 5), (int | None, "many")])
def test_an_option_refuses_values_of_another_type(kind: object, value: object) -> None:
    with pytest.raises(ValueError):
        Option(kind).convert(value)


def test_extra_options_named_by_a_function_are_read_only_when_needed() -> None:
    asked: list[int] = []

    def names() -> list[str]:
        asked.append(1)
        return ["n_batch"]

    options = LoaderOptions.of("x", {"n": Option(int, 1, "")}, names)
    assert options.check({"n": "2"}) == {"n": 2} and not asked
    assert options.check({"n_batch": "8"}, from_text=True) == {"n_batch": 8}
    with pytest.raises(LMQLError, match=r"the x backend has no option --m; its options: --n \(int\); the engine's: "
                       r"--max_batch \(int\), --token_budget \(int\); it also takes --n_batch$"):
        options.check({"m": 1})


def test_an_option_given_as_help_alone_takes_any_value_read_as_before() -> None:
    options = LoaderOptions.of("x", {"a": "any value"}, None)
    assert options.check({"a": "3"}, from_text=True) == {"a": 3}
    assert options.check({"a": "3"}) == {"a": "3"}
    with pytest.raises(LMQLError, match=r"the x backend has no option --b; its options: --a \(any\); "):
        options.check({"b": 1})


@needs_example
@pytest.mark.parametrize(("args", "message"), [
    (["--nope", "1"], f"Error: the counting backend has no option --nope; {COUNTING_OPTIONS}"),
    (["--fail_on", "abc"], f"Error: --fail_on of the counting backend must be int | None, got 'abc'; "
                           f"{COUNTING_OPTIONS}"),
])
def test_a_strict_backend_refuses_from_serve_model(args: list[str], message: str) -> None:
    assert the_error(run_lmql("serve-model", "counting:x", "--port", "0", *args)) == message


@needs_example
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nope": 1}, f"the counting backend has no option --nope; {COUNTING_OPTIONS}"),
    ({"scores": "perhaps"}, "--scores of the counting backend must be bool, got 'perhaps'"),
])
def test_a_strict_backend_refuses_from_local(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LMQLError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        lmql.model("local:counting:refused", **kwargs)
    assert lmql.model("local:counting:refused").generate_sync("a", max_tokens=2) == "bc"


@needs_example
def test_lmql_generate_local_refuses_in_one_line() -> None:
    result = run_lmql("generate", "a", "-m", "local:counting:x", "--fail_on", "1.5")
    assert the_error(result).startswith("Error: --fail_on of the counting backend must be int | None, got '1.5'")


@needs_example
def test_values_from_serve_model_reach_the_backend_converted() -> None:
    server = Server("counting:x", "--fail_on", "250", "--scores", "false")
    try:
        info = lmql.model("counting:x", endpoint=server.endpoint).model_info_sync()["model_info"]
    finally:
        assert server.stop() == 0, server.output()
    assert info["fail_on"] == 250
    assert info["loader_kwargs"] == {"fail_on": "250", "scores": "False", "cuda": "False", "dtype": "None"}


@needs_hf
def test_hf_typed_options_refuse_from_serve_model() -> None:
    error = the_error(run_lmql("serve-model", "lmql-tiny", "--port", "0", "--max_batch", "many"))
    assert error.startswith("Error: --max_batch of the hf backend must be int, got 'many'; its options: "
                            "--max_batch (int), --max_seq_len (int),")
    assert error.endswith("; other keys go to AutoModelForCausalLM.from_pretrained")


@needs_hf
def test_hf_typed_options_refuse_from_local_and_extras_pass_on() -> None:
    with pytest.raises(LMQLError, match="--cache_memory_fraction of the hf backend must be float, got 'half'"):
        lmql.model("local:lmql-tiny", cache_memory_fraction="half")
    # neither from_pretrained nor the config takes it: refused before the weights load (which is
    # at first use, as LMQL's in-process models load)
    with pytest.raises(LMQLError, match=r"the hf backend has no option --no_such_arg; .*from_pretrained takes "):
        lmql.model("local:lmql-tiny", no_such_arg=3).generate_sync("Hi", max_tokens=1)


def test_engine_options_from_serve_model_set_the_token_budget_and_the_batch() -> None:
    server = Server("random", "--token_budget", "3", "--max_batch", "1")
    try:
        llm = lmql.model("random", endpoint=server.endpoint)
        llm.generate_sync("abcdefghij", max_tokens=1)
        prefilled = server_metric(server, "lmql_tokens_prefilled")
        assert prefilled >= 9 and server_metric(server, "lmql_engine_steps") == math.ceil(prefilled / 3)

        async def four_at_once() -> list[str]:
            return await asyncio.gather(*(llm.generate(prompt, max_tokens=3) for prompt in "wxyz"))

        asyncio.run(four_at_once())  # one sequence a step: a step for each token generated
        generated = server_metric(server, "lmql_tokens_generated") - 1
        assert generated >= 4
        assert server_metric(server, "lmql_engine_steps") - math.ceil(prefilled / 3) == generated
    finally:
        assert server.stop() == 0, server.output()


def test_engine_options_from_local_reach_the_engine() -> None:
    llm = lmql.model("local:random", max_batch="2", token_budget=5)
    llm.generate_sync("ab", max_tokens=1)  # the model loads on first use
    engine = llm.client.host.models["random"].engine  # type: ignore[attr-defined]
    assert (engine.scheduler.max_batch, engine.scheduler.token_budget) == (2, 5)
    with pytest.raises(LMQLError, match="--token_budget of the random backend must be int, got 'lots'"):
        lmql.model("local:random", token_budget="lots")


@needs_hf
def test_an_engine_option_the_backend_declares_reaches_both() -> None:
    llm = lmql.model("local:lmql-tiny", max_batch=200, max_seq_len=64)
    llm.generate_sync("Hi", max_tokens=1)  # the model loads on first use
    loaded = llm.client.host.models["lmql-tiny"]  # type: ignore[attr-defined]
    assert loaded.backend.max_batch == loaded.engine.scheduler.max_batch == 200
