"""Tracing and inference certificates (``lmql.traced``, ``lmql.certificate``, ``certificate=`` on a
call), as LMQL 0.7.3 has them (runtime/tracing/, interpreter.py's certificate handling).

Expected values: the certificate's layout from LMQL 0.7.3's certificate.py; the request and token
ids from running LMQL 0.7.3 on the same lmql-tiny weights (tests/compat/build_model.py's folder)
with the same programs, cross-checked against transformers' tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmql  # noqa: E402
from tests.conftest import run_lmql  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"
GREET = "Greet the world:[GREETING]"
# LMQL 0.7.3, lmql.F(GREET, "len(TOKENS(GREETING)) < 4") on lmql-tiny: its one lmtp.generate request
GREET_IDS = [1, 41, 264, 314, 266, 700, 28]  # <s> + "Greet the world:"
GREET_TOKENS = [201, 200, 35]
GREET_VALUE = "\n\tA"


def greet() -> lmql.LMQLQueryFunction:
    return lmql.F(GREET, "len(TOKENS(GREETING)) < 4", model=MODEL)


def test_the_request_ids_are_the_prompts_tokens() -> None:
    import transformers

    from lmql_hf.bundled import bundled_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(bundled_path("lmql-tiny"))
    assert [tokenizer.bos_token_id, *tokenizer("Greet the world:", add_special_tokens=False)["input_ids"]] == GREET_IDS
    assert tokenizer.decode(GREET_TOKENS) == GREET_VALUE


def test_a_certificate_file_holds_the_request_its_tokens_and_the_result(tmp_path: Path) -> None:
    path = tmp_path / "certificate.json"
    assert greet()(certificate=str(path)) == GREET_VALUE
    certificate = json.loads(path.read_text())
    # certificate.py asdict: a root certificate's keys, in this order, events only when some
    assert list(certificate) == ["name", "type", "lmql.version", "time", "events"]
    assert certificate["name"] == "<function query>" and certificate["type"] == "lmql.InferenceCertificate"
    request, result = certificate["events"]
    assert request["name"] == "lmtp.generate" and set(request["data"]) == {"model", "tokenizer", "kwargs", "result"}
    assert request["data"]["kwargs"]["ids"] == GREET_IDS and request["data"]["kwargs"]["temperature"] == 0.0
    assert request["data"]["result"] == GREET_TOKENS
    assert request["data"]["model"]["model"] == "lmql-tiny"  # the served model's MODEL_INFO
    assert result == {"name": "lmql.LMQLResult", "data": [GREET_VALUE]}  # lmql.F's query returns the value


def test_certificate_true_prints_it_and_a_callable_gets_it(capsys: pytest.CaptureFixture[str]) -> None:
    greet()(certificate=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed["events"][0]["data"]["result"] == GREET_TOKENS
    received: list[lmql.InferenceCertificate] = []
    greet()(certificate=received.append)
    (certificate,) = received
    assert isinstance(certificate, lmql.InferenceCertificate)
    assert json.loads(str(certificate)) == certificate.asdict()
    assert certificate.asdict()["events"][1]["data"] == [GREET_VALUE]


def test_a_certificate_renders_the_same_time_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[lmql.InferenceCertificate] = []
    greet()(certificate=received.append)
    (certificate,) = received
    first = certificate.asdict()
    seconds = iter(range(10_000))  # the clock moves on between renderings
    monkeypatch.setattr("time.strftime", lambda *_: f"second {next(seconds)}")
    assert certificate.asdict()["time"] == first["time"]
    assert json.loads(str(certificate))["time"] == first["time"]


def test_return_dict_pairs_each_result_with_the_certificate() -> None:
    # interpreter.py: results become [{"result": r, "certificate": cert}], then a single one unpacked
    q = lmql.query('argmax "Hi[X]" where len(TOKENS(X)) < 2', is_async=False)
    paired = q(model=MODEL, certificate="return_dict")
    assert set(paired) == {"result", "certificate"}
    assert paired["result"].variables == q(model=MODEL).variables
    events = paired["certificate"].asdict()["events"]
    assert events[-1] == {"name": "lmql.LMQLResult", "data": [{"prompt": paired["result"].prompt,
                                                                "variables": paired["result"].variables}]}


def test_traced_collects_one_child_per_query_and_model_call() -> None:
    @lmql.query(model=MODEL)
    async def named() -> None:
        '''lmql
        "Hi[X]" where len(TOKENS(X)) < 2
        '''

    @lmql.query(model=MODEL)
    async def outer() -> None:
        '''lmql
        "A[Y]" where len(TOKENS(Y)) < 2
        await named()
        return Y
        '''

    model = lmql.model(MODEL)
    with lmql.traced("my-context") as tracer:
        lmql.main(named)
        lmql.run_sync('"Hey[W]" where len(TOKENS(W)) < 2', model=MODEL)
        lmql.main(outer)
        assert lmql.generate_sync("Hi", max_tokens=2, model=model) == "pple"  # LMQL 0.7.3's text
        model.score_sync("Hello", [" a", " b"])
    assert isinstance(tracer, lmql.Tracer)
    # LMQL 0.7.3's names: a query function's own, "<function query>" from a string, lmql.generate
    children = [(c.name, [e["name"] for e in c.events], [g.name for g in c.children]) for c in tracer.children]
    assert children[:4] == [("named", ["lmtp.generate"], []), ("<function query>", ["lmtp.generate"], []),
                            ("outer", ["lmtp.generate"], ["named"]), ("lmql.generate", ["lmtp.generate"], [])]
    # scoring: a child tracer as in LMQL, here with its SCORE requests recorded (one per value)
    assert children[4][0].endswith(".score") and children[4][1] == ["lmtp.score", "lmtp.score"]
    generate_request = tracer.children[3].events[0]["data"]
    assert generate_request["kwargs"]["ids"] == [1, 42, 75] and generate_request["result"] == [587, 301]
    certificate = lmql.certificate(tracer).asdict()
    assert certificate["name"] == "my-context" and "events" not in certificate  # LMQL: no results unasked
    assert [c["name"] for c in certificate["children"]] == [c[0] for c in children]
    assert set(certificate["children"][0]) == {"name", "events"}  # a child has no type, version or time


def test_nothing_is_recorded_outside_a_traced_context() -> None:
    tracer = lmql.Tracer("kept")
    greet()()
    assert tracer.events == [] and tracer.children == []
    assert lmql.certificate(None) is None
    assert "warning" in lmql.certificate(None, empty_on_null=True).asdict()
    assert str(lmql.certificate(tracer)).startswith("{") and "events" not in lmql.certificate(tracer).asdict()


def test_generate_takes_certificate_as_a_query_does() -> None:
    received: list[lmql.InferenceCertificate] = []
    assert lmql.generate_sync("Hi", max_tokens=2, model=MODEL, certificate=received.append) == "pple"
    certificate = received[0].asdict()
    assert certificate["name"] == "lmql.generate"
    assert [e["name"] for e in certificate["events"]] == ["lmtp.generate", "lmql.LMQLResult"]
    assert certificate["events"][1]["data"] == ["pple"]


@pytest.mark.parametrize("bad", [42, 1.5, object()])
def test_a_certificate_option_of_another_kind_is_refused_before_running(bad: object) -> None:
    with pytest.raises(TypeError, match="certificate= takes True, a file path, a callable"):
        greet()(certificate=bad)
    with pytest.raises(TypeError, match="certificate= takes"):
        lmql.generate_sync("Hi", max_tokens=1, model=MODEL, certificate=bad)


def test_redacted_keys_are_removed_from_recorded_data() -> None:
    from lmql.runtime.tracing import add_extra_redact_keys

    add_extra_redact_keys("secret_field")
    tracer = lmql.Tracer("t")
    tracer.event("e", {"Authorization": "Bearer x", "nested": [{"secret_field": 1, "kept": 2}]})
    assert tracer.events[0]["data"] == {"Authorization": "<removed>",
                                        "nested": [{"secret_field": "<removed>", "kept": 2}]}
    with pytest.warns(RuntimeWarning, match="non-serializable"):
        assert tracer.event("bad", {"x": object()}) is None
    tracer.add("lmtp.requests")
    tracer.add("lmtp.requests", 2)
    assert tracer.metrics == {"lmtp": {"requests": 3}}


def test_trace_decorator_records_only_under_an_active_tracer() -> None:
    from lmql.runtime.tracing import trace

    @trace("step")
    def step() -> str:
        return greet()()

    assert step() == GREET_VALUE
    with lmql.traced("outer") as tracer:
        assert step() == GREET_VALUE
    (child,) = tracer.children
    assert child.name == "step" and [c.name for c in child.children] == ["<function query>"]


def test_version_tag_and_runtime_modules() -> None:
    assert lmql.version.version == lmql.__version__ and lmql.version_info is lmql.version
    assert lmql.tag("system") == "<lmql:system/>"  # formatting.py tag
    assert lmql.lmql_runtime is lmql.runtime_support
    assert lmql.lmql_runtime.format("a [b]") == "a [[b]]"  # formatting.py format: brackets escaped
    assert lmql.lmql_runtime.format([{"role": "user", "content": "hi"}]) == "<lmql:user/>hi"
    assert lmql.runtime.tracing.traced is lmql.traced  # submodules reachable as attributes, as in LMQL
    with pytest.raises(AttributeError, match="no attribute 'interpreter'"):
        lmql.runtime.interpreter  # noqa: B018 (LMQL's internal module: not provided)
    from lmql.runtime.output_writer import BaseOutputWriter

    assert isinstance(lmql.silent, BaseOutputWriter)


def test_runtime_call_runs_queries_coroutines_and_functions() -> None:
    async def doubled(x: int) -> int:
        return 2 * x

    async def main() -> list[object]:
        call = lmql.lmql_runtime.call
        return [await call(greet()), await call(doubled, 2), await call(len, "abc")]

    assert lmql.run_in_loop(main()) == [GREET_VALUE, 4, 3]


def test_a_role_tag_from_lmql_tag_renders_as_the_role_tag_syntax() -> None:
    tagged = lmql.run_sync('argmax "{lmql.tag(\'user\')}Hi[X]" where len(TOKENS(X)) < 3', model=MODEL)
    written = lmql.run_sync('argmax "{:user}Hi[X]" where len(TOKENS(X)) < 3', model=MODEL)
    assert tagged.prompt == written.prompt and tagged.variables == written.variables


def test_lmql_run_writes_the_certificate_where_certificate_says(tmp_path: Path) -> None:
    # cli.py of LMQL 0.7.3: --certificate True prints it, a path writes it
    program = tmp_path / "greet.lmql"
    program.write_text(f'argmax "{GREET}" from "{MODEL}" where len(TOKENS(GREETING)) < 4\n')
    path = tmp_path / "certificate.json"
    run_lmql("run", str(program), "--certificate", str(path))
    (request, result) = json.loads(path.read_text())["events"]
    assert request["data"]["kwargs"]["ids"] == GREET_IDS and request["data"]["result"] == GREET_TOKENS
    assert result["data"][0]["variables"] == {"GREETING": GREET_VALUE}
