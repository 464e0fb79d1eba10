"""The surface LMQL 0.7.3 programs use around queries: result shapes per decoder, result[0],
positional inputs, decoder and model options, the query function's own attributes. Expected
values come from LMQL 0.7.3's source (cited per test) or from another way of asking the same
thing; the differential suite's programs for these are in tests/compat/queries_api.py."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmql  # noqa: E402
from lmql_core.errors import LMQLError  # noqa: E402
from lmql_core.query import QueryError  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"
HELLO = '"Hello[WHO]" where len(TOKENS(WHO)) < 4'


def test_result_zero_is_the_result_with_a_deprecation_warning() -> None:
    # interpreter.py LMQLResult.__getitem__: [0] returns self and warns; other keys fail
    result = lmql.run_sync("argmax " + HELLO, model=MODEL)
    with pytest.warns(DeprecationWarning, match=r"result\[0\]"):
        assert result[0] is result
    with pytest.raises(AttributeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result[1]


def test_argmax_with_n_gives_a_list_and_beam_always_does() -> None:
    # decoders.py: argmax finishes singular only when n == 1, beam_search never, sample always
    one = lmql.run_sync("argmax " + HELLO, model=MODEL)
    two = lmql.run_sync("argmax(n=2) " + HELLO, model=MODEL)
    assert isinstance(two, list) and len(two) == 2
    assert [r.variables for r in two] == [one.variables, one.variables]
    beam = lmql.run_sync("beam(n=1) " + HELLO, model=MODEL)
    assert isinstance(beam, list) and len(beam) == 1
    assert not isinstance(lmql.run_sync("sample(n=1) " + HELLO, model=MODEL), list)


def test_sampled_returns_are_a_list_of_the_returned_values() -> None:
    # LMQL's docs (lib/python.ipynb): with return and sample(n=2), a list of the return values
    source = 'sample(n=2, temperature=0.8)\n    "Count: [N]" where INT(N) and len(TOKENS(N)) < 3\n    return N'
    values = lmql.run_sync(source, model=MODEL)
    assert isinstance(values, list) and len(values) == 2 and all(isinstance(v, int) for v in values)
    number = lmql.F("A number: [N]", "INT(N) and len(TOKENS(N)) < 3", model=MODEL)
    sampled = number(decoder="sample", n=2)
    assert isinstance(sampled, list) and len(sampled) == 2 and all(isinstance(v, int) for v in sampled)
    assert isinstance(number(), int)


def test_a_run_that_meets_no_variable_is_one_result_in_a_list() -> None:
    # interpreter.py run(): a query head that finished before any variable returns [result]
    assert lmql.run_sync('argmax\n    "Hi there"\n    return 7', model=MODEL) == [7]
    result = lmql.run_sync('argmax "Hi there"', model=MODEL)
    assert isinstance(result, list) and result[0].prompt == "Hi there"


def test_positional_inputs_bind_in_sorted_order_as_keywords_would() -> None:
    # lmql_runtime.try_bind_positional_to_kwargs over the compiler's sorted(free_vars)
    source = '"Say {b}{a}:[X]" where len(TOKENS(X)) < 4\nreturn X'
    by_name = lmql.run_sync(source, a=" one", b=" two", model=MODEL)
    assert lmql.run_sync(source, " one", " two", model=MODEL) == by_name
    summary = lmql.F("Say {b}{a}:[X]", "len(TOKENS(X)) < 4", model=MODEL)
    assert summary(" one", " two") == summary(a=" one", b=" two") == by_name


def test_positional_inputs_must_cover_every_input() -> None:
    with pytest.raises(TypeError, match=r"takes 2 input\(s\) by position \(a, b\), got 1"):
        lmql.run_sync('"Say {a}{b}:[X]" where len(TOKENS(X)) < 4', "one", model=MODEL)


def test_query_functions_name_their_inputs_and_outputs() -> None:
    q = lmql.query('argmax\n    y = 2\n    "Hello[WHO] and {x}[Z]" where len(TOKENS(WHO)) < 3 and len(TOKENS(Z)) < 3')
    assert q.output_variables == ["WHO", "Z", "y"] and q.output_keys == q.output_variables
    assert q.input_keys == ["x"]
    assert "Hello[WHO]" in q.lmql_code


def test_lmqls_common_decoder_arguments_are_accepted_and_change_no_greedy_result() -> None:
    # interpreter.py EXTRA_DECODER_ARGS: accepted by every decoder; chunksize only sizes requests
    plain = lmql.run_sync("argmax " + HELLO, model=MODEL)
    for arguments in ("chunksize=1", "chunk_timeout=2.5, openai_chunksize=8, max_len=512, verbose=False",
                      "step_budget=4000, cache=False, show_speculative=False"):
        assert lmql.run_sync(f"argmax({arguments}) " + HELLO, model=MODEL).variables == plain.variables
    assert lmql.run_sync("argmax " + HELLO, model=MODEL, chunksize=2).variables == plain.variables


def test_a_decoder_argument_no_decoder_takes_is_a_value_error() -> None:
    # interpreter.validate_args raises ValueError; a call's extra arguments are left out instead
    with pytest.raises(ValueError, match="unknown decoder argument.*budget"):
        lmql.run_sync("argmax(budget=3) " + HELLO, model=MODEL)
    with pytest.raises(QueryError, match="chunksize must be a positive integer"):
        lmql.run_sync("argmax(chunksize=0) " + HELLO, model=MODEL)
    with pytest.raises(QueryError, match="'sample_var' is not supported"):
        lmql.run_sync("sample_var(b=2) " + HELLO, model=MODEL)


def test_model_options_of_lmql_reach_the_requests() -> None:
    # lmtp_dcmodel: lmql.model(..., top_k=) is sent with every request; top_k=1 sampling is greedy
    greedy = lmql.run_sync("argmax " + HELLO, model=MODEL)
    top1 = lmql.model(MODEL, top_k=1, chunksize=2)
    assert top1.decoding == {"top_k": 1, "chunksize": 2}
    assert lmql.run_sync("sample(temperature=1.0) " + HELLO, model=top1).variables == greedy.variables
    assert top1.generate_sync("Hello", max_tokens=3, decoder="sample") == greedy.variables["WHO"]


def test_inprocess_is_local() -> None:
    assert lmql.model("lmql-tiny", inprocess=True).model_id == lmql.model(MODEL).model_id


def test_silent_loads_without_a_word(capfd: pytest.CaptureFixture[str]) -> None:
    # transformers_model.py: silent=True prints nothing while loading; batch_size is its max batch
    capfd.readouterr()
    llm = lmql.model(MODEL, silent=True, batch_size=3)
    assert llm.generate_sync("Hi", max_tokens=2)
    assert capfd.readouterr() == ("", "")
    lmql.model(MODEL, batch_size=5).generate_sync("Hi", max_tokens=1)  # loads at first use
    assert "Loaded the weights" in capfd.readouterr().err


@pytest.mark.parametrize(("options", "message"), [({"bits": 5}, "bits=5"),
                                                   ({"loader": "auto-gptq"}, "loader='auto-gptq'")])
def test_lmql_model_options_we_cannot_honour_fail_clearly(options: dict[str, object], message: str) -> None:
    with pytest.raises(LMQLError, match=message):
        lmql.model(MODEL, **options)


def test_served_models_take_lmqls_in_process_options_without_complaint(recwarn: pytest.WarningsRecorder) -> None:
    llm = lmql.model("lmql-tiny", endpoint="localhost:1", silent=True, batch_size=4, chunksize=8)
    assert llm.decoding == {"chunksize": 8} and not recwarn.list


# --- LMQL 0.7.3's public names (its dir(lmql), less what it re-exports from inspect/typing) ---

LMQL_PUBLIC = ("F", "LLM", "LMQLQueryFunction", "LMQLResult", "ScoringResult", "algorithms", "decorators",
               "generate", "generate_sync", "get_default_model", "get_default_scoring_model", "headless",
               "main", "model", "printing", "query", "query_from_string", "run", "run_file", "run_in_loop",
               "run_sync", "score", "score_sync", "serve", "set_default_model", "silent", "stream", "tokenizer",
               "InferenceCertificate", "Tracer", "certificate", "traced", "tag", "version", "version_info",
               "lmql_runtime", "runtime_support", "runtime", "language")


def test_lmqls_public_names_are_there() -> None:
    missing = [name for name in LMQL_PUBLIC if not hasattr(lmql, name)]
    assert not missing
    assert set(LMQL_PUBLIC) <= set(dir(lmql))


def test_import_lmql_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, time; t = time.perf_counter(); import lmql; took = time.perf_counter() - t; "
            "print(took, *(m in sys.modules for m in ('torch', 'transformers', 'numpy')))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    assert min(float(r[0]) for r in runs) < 0.3
    assert all(r[1:] == ["False", "False", "False"] for r in runs)


def test_tokenizer_is_the_models_tokenizer_called_as_in_lmql() -> None:
    import transformers

    from lmql_hf.bundled import bundled_path

    reference = transformers.AutoTokenizer.from_pretrained(bundled_path("lmql-tiny"))
    t = lmql.tokenizer("lmql-tiny")
    text = "Hello world, said the cat."
    assert t(text)["input_ids"] == reference(text, add_special_tokens=False)["input_ids"]
    assert t([text, "a"])["input_ids"][1] == reference("a", add_special_tokens=False)["input_ids"]
    assert t.decode(t(text)["input_ids"]) == text and "".join(t.tokenize(text)) == text
    assert lmql.tokenizer("lmql-tiny") is t and t.eos_token_id == reference.eos_token_id


def test_main_runs_an_async_query_to_its_result() -> None:
    q = lmql.query("argmax " + HELLO)
    assert lmql.main(q, model=MODEL).variables == lmql.run_sync("argmax " + HELLO, model=MODEL).variables


def test_stream_writes_the_variable_as_it_grows(capsys: pytest.CaptureFixture[str]) -> None:
    result = lmql.run_sync("argmax " + HELLO, model=MODEL, output_writer=lmql.stream("WHO"))
    assert capsys.readouterr().out == result.variables["WHO"].strip()
    lmql.run_sync("argmax " + HELLO, model=MODEL, output_writer=lmql.printing)
    shown = capsys.readouterr().out
    assert f"{result.prompt}\n\n valid=True" in shown
    lmql.run_sync("argmax " + HELLO, model=MODEL, output_writer=lmql.silent)
    assert capsys.readouterr().out == ""


def test_algorithms_map_calls_the_query_on_every_item_in_order() -> None:
    import lmql.algorithms as la

    summary = lmql.F("Say {text}:[X]", "len(TOKENS(X)) < 3", model=MODEL, is_async=True)
    items = [" one", " two", " three"]
    expected = [lmql.F("Say {text}:[X]", "len(TOKENS(X)) < 3", model=MODEL)(text=i) for i in items]
    assert lmql.main(la.map, summary, items, chunksize=2) == expected
    assert lmql.main(la.map, "Say {text}:[X]", items, where="len(TOKENS(X)) < 3", model=MODEL) == expected


def test_llm_from_descriptor_is_lmql_model() -> None:
    assert lmql.LLM.from_descriptor(MODEL).model_id == lmql.model(MODEL).model_id


def test_an_input_given_nowhere_is_a_type_error_naming_it() -> None:
    # lmql_runtime.make_kwargs: TypeError "Failed to resolve variable 's' in LMQL query."
    with pytest.raises(TypeError, match=r"Failed to resolve variable 'unknown_input_s'.*unknown_input_s=\.\.\."):
        lmql.run_sync('argmax\n    return unknown_input_s', model=MODEL)
    assert lmql.run_sync('argmax\n    return unknown_input_s', unknown_input_s=3, model=MODEL) == [3]
    assert lmql.run_sync('argmax\n    f = lambda a: a + 1\n    return f(2)', model=MODEL) == [3]


def test_a_forced_model_and_a_query_output_writer_apply_to_every_call(capsys: pytest.CaptureFixture[str]) -> None:
    # lmql_runtime.LMQLQueryFunction: force_model wins over model=; output_writer is used by calls
    q = lmql.query('argmax "Hello[WHO]" from "nonexistent-model" where len(TOKENS(WHO)) < 4', is_async=False)
    q.force_model(lmql.model(MODEL))
    q.output_writer = lmql.stream("WHO")
    result = q(model="another-nonexistent-model")
    assert capsys.readouterr().out == result.variables["WHO"].strip()
    assert q.args == q.input_keys == [] and q.extra_args == {}


@pytest.mark.parametrize(("counts", "beam", "sizes"), [
    # LMQL 0.7.3 decoders.get_bank_sizes_post_vilar: equal shares, the remainder to the most
    # advanced bank, then what a bank cannot fill passes up and (carried on) down
    ({1: 5, 2: 1}, 4, {1: 3, 2: 1}),
    ({0: 1, 1: 1, 3: 6}, 3, {0: 1, 1: 1, 3: 1}),
    ({2: 3}, 2, {2: 2}),
    ({0: 0, 1: 4}, 5, {0: 0, 1: 4}),
])
def test_beam_var_allocates_banks_as_post_and_vilar(counts: dict[int, int], beam: int, sizes: dict[int, int]) -> None:
    from lmql_core.query.beam_var import bank_sizes

    assert bank_sizes(counts, beam) == sizes


def test_beam_decoders_default_to_four_beams_and_give_lists() -> None:
    # decoders.py: beam_search(n=4), beam_var(n=4); both finish with a list, best first
    source = 'beam "The cat sat on the[P]" where P in [" mat", " dog", " table", " floor", " bed"]'
    assert len(lmql.run_sync(source, model=MODEL)) == 4
    results = lmql.run_sync("beam_var(n=2) " + HELLO, model=MODEL)
    assert isinstance(results, list) and len(results) >= 2


def test_bits_is_lmqls_name_for_a_quantized_dtype() -> None:
    # lmtp/utils.rename_model_args: bits=8 loads in 8 bit, as dtype="8bit" does here
    pytest.importorskip("lmql_hf")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    eight_bit = lmql.model(MODEL, bits=8)  # loads on first use, as LMQL's in-process models
    with pytest.raises(LMQLError, match="needs bitsandbytes"):
        eight_bit.generate_sync("Hi", max_tokens=1)


def test_var_samples_each_variable_and_returns_runs_that_keep_the_constraints() -> None:
    # decoders.var: b samples per variable, the finished runs in a list (sorted by score)
    source = 'var(b=2)\n    "Pick:[C]\\nAgain:[D]" where C in [" red", " blue"] and len(TOKENS(D)) < 3'
    results = lmql.run_sync(source, model=MODEL)
    assert isinstance(results, list) and results
    assert all(r.variables["C"] in (" red", " blue") and r.prompt.startswith("Pick:" + r.variables["C"])
               for r in results)
    with pytest.raises(QueryError, match="subdecoder='greedy'"):
        lmql.run_sync("var(b=2, subdecoder='greedy') " + HELLO, model=MODEL)


def test_var_with_the_beam_subdecoder_gives_lmqls_runs() -> None:
    # decoders.var(subdecoder="beam"): each run's b best tokens a step, all runs in one pool with
    # one stopping rule; every finished run kept. Expected: LMQL 0.7.3 on lmql-tiny (local folder)
    source = 'var(b=3, n=2, subdecoder="beam")\n    "Hello[WHO]" where len(TOKENS(WHO)) < 4\n' \
             '    "! And[X]" where len(TOKENS(X)) < 3'
    results = lmql.run_sync(source, model=MODEL)
    assert [(r.variables["WHO"], r.variables["X"]) for r in results] == [
        (", n:", " if you"), (", n:", " what do"), (", n:", ", I"),
        (", n.:", " if you"), (", n.:", " it's"), (", n.:", " you're")]


def test_beam_sample_keeps_n_sampled_beams_copies_included() -> None:
    # decoders.beam_sample: each beam repeated n times, one sampled token per copy, the n best
    # kept, equal copies not merged; nearly greedy sampling makes every copy the greedy run
    greedy = lmql.run_sync("argmax " + HELLO, model=MODEL)
    results = lmql.run_sync("beam_sample(n=3, temperature=0.0001) " + HELLO, model=MODEL)
    assert [r.variables for r in results] == [greedy.variables] * 3
    source = 'beam_sample\n    "Pick:[C]\\nAgain:[D]" where C in [" red", " blue"] and len(TOKENS(D)) < 3'
    sampled = lmql.run_sync(source, model=MODEL)
    assert isinstance(sampled, list) and len(sampled) == 4  # LMQL's n=4
    assert all(r.variables["C"] in (" red", " blue") for r in sampled)


def test_best_k_gives_lmqls_runs_in_lmqls_order() -> None:
    # decoders.best_k: best-first with an age penalty; results in dc.topk's order (numpy 1.26's
    # argpartition). Expected: LMQL 0.7.3 on lmql-tiny (local folder), gamma=0 (see below)
    source = 'best_k(k=2, budget=10, gamma=0.0, top_k_continuations=2) "Hello[WHO]" where len(TOKENS(WHO)) < 3'
    assert [r.variables["WHO"] for r in lmql.run_sync(source, model=MODEL)] == [" is a", ", n", " is the", ", I"]


def test_best_k_whose_every_run_falls_under_gamma_fails_at_once() -> None:
    # LMQL 0.7.3 loops until its step budget and fails ("decoder best_k did not finish"):
    # on this program (checked), lmql-tiny's next tokens fall under p = 0.05, so its heap empties
    source = 'best_k(k=2, budget=6)\n    "Hello[WHO]" where len(TOKENS(WHO)) < 4\n' \
             '    "! And[X]" where len(TOKENS(X)) < 3'
    with pytest.raises(QueryError, match="best_k found no finished run"):
        lmql.run_sync(source, model=MODEL)


@pytest.mark.parametrize(("scores", "k", "order"), [
    # np.argpartition(scores, -k)[-k:] under numpy 1.26.4 (LMQL 0.7.3's environment)
    ([-1.093, -0.613, -1.216, -1.2], 4, [2, 1, 0, 3]),
    ([-0.454, -0.768], 500, [1, 0]),
    ([-1.242, -1.382, -0.697, -1.364], 500, [1, 0, 2, 3]),
    ([-2.0, -1.0, -3.0, -0.5, -2.5], 3, [0, 3, 1]),
    ([-1.0, -1.0, -2.0], 3, [2, 1, 0]),
])
def test_lmql_topk_keeps_numpy_126s_argpartition_order(scores: list[float], k: int, order: list[int]) -> None:
    from lmql_core.query.best_k import lmql_topk

    assert lmql_topk(scores, k) == order


def test_the_same_source_run_again_reads_each_callers_names_and_runs_its_prologue_again() -> None:
    # lmql.run(source) compiles a source once (query/api.py's cache); each call is still the source
    # written at its call site, as LMQL compiles it anew: the caller's locals, the prologue's side
    # effects
    source = 'calls.append(1)\nargmax\n    "{greeting} [WHO]" where len(TOKENS(WHO)) < 2\n    return greeting'

    def run_with(greeting: str, calls: list[int]) -> str:
        return lmql.run_sync(source, model=MODEL)  # type: ignore[no-any-return]

    first, second = [], []
    assert run_with("Hello", first) == "Hello"
    assert run_with("Bye", second) == "Bye"
    assert (first, second) == ([1], [1])
    assert run_with("Hi", second) == "Hi" and second == [1, 1]
