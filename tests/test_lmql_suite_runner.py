"""tests/compat/lmql_suite.py's own logic, without LMQL 0.7.3: the model swap, the import rewrite,
and the harness's per-test reporting on small test files run with our ``lmql``."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parent / "compat"
sys.path.insert(0, str(COMPAT))
import lmql_suite  # noqa: E402

MODEL = "local:/models/tiny"


@pytest.mark.parametrize(("source", "expected"), [
    ('lmql.model("random", seed=123)', f'lmql.model("{MODEL}")'),
    ('lmql.model("random", tokenizer="gpt2", seed=1)', f'lmql.model("{MODEL}")'),
    ("lmql.model('openai/text-ada-001', seed=123)", f'lmql.model("{MODEL}")'),
    ('lmql.model("local:gpt2", inprocess=True, silent=True)', f'lmql.model("{MODEL}", inprocess=True, silent=True)'),
    ('lmql.model("gpt2", cuda=True)', f'lmql.model("{MODEL}", cuda=True)'),
    ("    from\n        'openai/text-ada-001'\n", f'    from\n        "{MODEL}"\n'),
    ('@lmql.query(model="chatgpt")', f'@lmql.query(model="{MODEL}")'),
    ('lmql.F("Say: [R]", model="random")', f'lmql.F("Say: [R]", model="{MODEL}")'),
    ('t = lmql.tokenizer("gpt2")', 't = lmql.tokenizer("/models/tiny")'),
    ('x = "randomly chosen"; y = "gpt2-medium"', 'x = "randomly chosen"; y = "gpt2-medium"'),
])
def test_swap_models_changes_only_model_names(source: str, expected: str) -> None:
    assert lmql_suite.swap_models(source, MODEL) == expected


def test_rewrite_points_lmqls_test_imports_at_the_harness() -> None:
    source = ("from lmql.tests.expr_test_utils import run_all_tests\n"
              "from expr_test_utils import run_all_tests\n"
              "from lmql.tests.queryargs.test_sync import *\n")
    assert lmql_suite.rewrite(source, MODEL) == ("from lmql_suite_harness import run_all_tests\n"
                                                 "from lmql_suite_harness import run_all_tests\n"
                                                 "from queryargs.test_sync import *\n")


def test_uses_internals() -> None:
    assert lmql_suite.uses_internals("from lmql.language.qstrings import QstringParser")
    assert lmql_suite.uses_internals("from lmql.tests.expr_test_utils import *")
    assert not lmql_suite.uses_internals("import lmql\nfrom lmql.tests.expr_test_utils import run_all_tests")
    assert not lmql_suite.uses_internals("def test_skip():\n    import lmql.runtime.openai_secret")


SYNTHETIC = '''
import lmql
from lmql.tests.expr_test_utils import run_all_tests, lmql_test

def test_sync_passes():
    assert 1 + 1 == 2

def test_sync_fails():
    assert 1 + 1 == 3, "arithmetic"

async def test_async_fails():
    # LMQL's run_all_tests lets an un-awaited coroutine pass; the harness awaits it
    raise ValueError("awaited\\nsecond line")

def test_returns_a_failing_coroutine():
    async def inner():
        raise KeyError("inner")
    return inner()

@lmql.query(model="random")
async def test_query():
    \'\'\'lmql
    argmax "Hello[WHO]" where len(TOKENS(WHO)) < 3
    \'\'\'

@lmql_test
def test_expr():
    pass

if __name__ == "__main__":
    run_all_tests(globals())
'''


def run_harness(folder: Path, source: str) -> lmql_suite.FileRun:
    folder.mkdir()
    (folder / "test_synthetic.py").write_text(source)
    lmql_suite.prepare(folder, folder.parent / "rewritten", "local:lmql-tiny")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMQL_SUITE_ORIGINAL_UTILS": str(folder / "missing.py")}
    return lmql_suite.run_file(sys.executable, folder.parent / "rewritten", "test_synthetic.py", env,
                               timeout=240, log=folder.parent / "stderr.log")


def test_harness_reports_each_test_with_our_lmql(tmp_path: Path) -> None:
    run = run_harness(tmp_path / "tests", SYNTHETIC)
    names = ["test_sync_passes", "test_sync_fails", "test_async_fails", "test_returns_a_failing_coroutine",
             "test_query", "test_expr"]
    assert run.plan == names
    assert run.file_error is None, (tmp_path / "stderr.log").read_text()
    assert run.results == {
        "test_sync_passes": (True, None),
        "test_sync_fails": (False, "AssertionError: arithmetic"),
        "test_async_fails": (False, "ValueError: awaited"),
        "test_returns_a_failing_coroutine": (False, "KeyError: 'inner'"),
        "test_query": (True, None),
        "test_expr": (False, "NotImplementedError: lmql_test (lmql.tests.expr_test_utils) needs LMQL 0.7.3's internals"),
    }


def test_a_file_that_fails_to_import_reports_its_tests_as_not_run(tmp_path: Path) -> None:
    source = textwrap.dedent('''
        import lmql.no_such_module
        def test_never_reached():
            pass
    ''')
    run = run_harness(tmp_path / "tests", source)
    assert run.plan == ["test_never_reached"]
    assert run.results == {}
    assert run.file_error == "ModuleNotFoundError: No module named 'lmql.no_such_module'"
    assert run.outcome("test_never_reached") == (False, "not run: " + run.file_error)


def test_a_file_past_its_timeout_keeps_the_results_it_printed(tmp_path: Path) -> None:
    source = "import time\ndef test_quick():\n    pass\ndef test_slow():\n    time.sleep(60)\n"
    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "test_slow.py").write_text(source)
    lmql_suite.prepare(folder, tmp_path / "rewritten", MODEL)
    run = lmql_suite.run_file(sys.executable, tmp_path / "rewritten", "test_slow.py", dict(os.environ),
                              timeout=5, log=tmp_path / "stderr.log")
    assert run.results == {"test_quick": (True, None)}
    assert run.outcome("test_slow") == (False, "not run: file timed out after 5 s")

