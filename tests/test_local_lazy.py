"""In-process (``local:``, ``inprocess=True``) models load on first use, as in LMQL 0.7.3: its
``lmql.model(..., inprocess=True)`` only records the model, and ``LMTPDcModel.ensure_connected``
starts the in-process server when a query first generates or scores. So a file of queries that
names a model it cannot load imports fine, and the error comes at the first query on it."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmql  # noqa: E402
from lmql_core.errors import LMQLError  # noqa: E402
from lmql_core.query.errors import QuerySyntaxError  # noqa: E402

pytestmark = pytest.mark.hf
MODEL = "local:lmql-tiny"
MISSING = "local:/no/such/model-folder"
HELLO = '"Hello[WHO]" where len(TOKENS(WHO)) < 4'


def test_a_model_that_cannot_load_is_an_error_at_each_use_not_at_lmql_model() -> None:
    llm = lmql.model(MISSING, inprocess=True, silent=True)  # LMQL: nothing loads here
    for _ in range(2):  # the failed load is tried again, and fails the same way
        with pytest.raises(LMQLError, match="no model folder at '/no/such/model-folder'"):
            lmql.run_sync("argmax " + HELLO, model=llm)
    with pytest.raises(LMQLError, match="no model folder"):
        llm.generate_sync("Hello", max_tokens=2)


def test_syntax_and_missing_inputs_are_reported_before_a_load_is_tried() -> None:
    llm = lmql.model(MISSING)
    with pytest.raises(QuerySyntaxError, match="invalid syntax"):
        lmql.run_sync('argmax\n    "Hi [X]" where len(TOKENS(X)) < 3\n    x = = 1', model=llm)
    with pytest.raises(TypeError, match="Failed to resolve variable 'name'"):
        lmql.run_sync('argmax "Hello {name}[WHO]" where len(TOKENS(WHO)) < 4', model=llm)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is there: cuda=True loads")
def test_cuda_without_a_gpu_fails_at_the_first_query_on_the_model() -> None:
    # LMQL's test_local_model_python.py defines such a model at module level next to CPU ones
    on_gpu = lmql.model(MODEL, cuda=True, inprocess=True, silent=True)
    assert lmql.run_sync("argmax " + HELLO, model=MODEL).variables["WHO"]  # the file's other queries run
    with pytest.raises(LMQLError, match="--cuda was given but torch sees no CUDA device"):
        lmql.run_sync("argmax " + HELLO, model=on_gpu)


def test_loading_happens_at_first_use(capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    llm = lmql.model(MODEL, batch_size=11)  # a loader argument no other test uses: a new load
    assert "Loaded the weights" not in capfd.readouterr().err
    assert llm.generate_sync("Hi", max_tokens=2)
    assert "Loaded the weights" in capfd.readouterr().err


def test_concurrent_first_uses_load_the_model_once(capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    llm = lmql.model(MODEL, batch_size=12)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(llm.generate_sync("Hi", max_tokens=3)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert capfd.readouterr().err.count("Loaded the weights") == 1
    assert len(results) == 3 and len(set(results)) == 1


def test_silent_mutes_the_loading_thread_only(capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    llm = lmql.model(MODEL, batch_size=13, silent=True)
    done = threading.Event()
    loader = threading.Thread(target=lambda: (llm.generate_sync("Hi", max_tokens=2), done.set()))
    loader.start()
    printed = 0
    while not done.is_set() and printed < 10_000:
        print("main thread", flush=True)
        printed += 1
        time.sleep(0.01)
    loader.join(timeout=300)
    out, err = capfd.readouterr()
    assert done.is_set() and "Loaded the weights" not in err and "Loading" not in err
    assert out.count("main thread") == printed >= 1
