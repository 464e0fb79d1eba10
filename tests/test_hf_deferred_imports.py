"""Deferred imports while a model loads (lmql_hf.loading.deferred): a real package written to disk
stands in for scikit-learn, whose import transformers 5.17 pulls in at load time; and the server's
own load of lmql-tiny, with and without the deferral."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("lmql_hf")

from lmql_hf.loading.deferred import OFF_SWITCH, StandIn, deferred  # noqa: E402


@pytest.fixture
def heavy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package that leaves a file behind when it is really imported, with a module of a
    function and a class, and a consumer that imports both at its top (as transformers does)."""
    name = f"heavy_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(tmp_path / "imported")!r}).write_text("yes")
        __version__ = "1.2"
    """))
    (package / "metrics.py").write_text(textwrap.dedent("""
        def curve(values):
            return [v * 2 for v in values]

        class Shape:
            pass
    """))
    (tmp_path / f"{name}_consumer.py").write_text(f"from {name}.metrics import Shape, curve\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(OFF_SWITCH, raising=False)
    yield name
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


def imported(heavy: str) -> bool:
    marker = Path(importlib.util.find_spec(f"{heavy}_consumer").origin).with_name("imported")  # type: ignore[arg-type]
    return marker.exists()


def consumer_within_deferral(heavy: str) -> ModuleType:
    with deferred(prefixes=(heavy,)):
        consumer = importlib.import_module(f"{heavy}_consumer")
        assert isinstance(sys.modules[heavy], StandIn)
    return consumer


def test_a_deferred_name_imports_its_module_at_first_use_and_acts_as_the_real_one(heavy: str) -> None:
    consumer = consumer_within_deferral(heavy)
    assert not imported(heavy)
    assert heavy not in sys.modules  # the stand-ins left with the block
    assert consumer.curve([1, 2, 3]) == [2, 4, 6]
    assert imported(heavy)
    real = importlib.import_module(f"{heavy}.metrics")
    assert consumer.Shape.resolve() is real.Shape
    assert isinstance(real.Shape(), consumer.Shape)
    assert issubclass(real.Shape, consumer.Shape)

    class Sub(consumer.Shape):  # type: ignore[misc,name-defined]
        pass

    assert Sub.__mro__[1] is real.Shape


def test_isinstance_against_a_deferred_class_is_false_without_importing(heavy: str) -> None:
    consumer = consumer_within_deferral(heavy)
    assert not isinstance(object(), consumer.Shape)
    assert not imported(heavy)


def test_within_the_block_a_module_attribute_read_is_a_use(heavy: str) -> None:
    with deferred(prefixes=(heavy,)):
        module = importlib.import_module(heavy)
        assert not imported(heavy)
        assert module.__version__ == "1.2"
        assert imported(heavy)
        assert not isinstance(sys.modules[heavy], StandIn)


def test_an_absent_package_stays_absent() -> None:
    absent = f"absent_{uuid.uuid4().hex[:8]}"
    with deferred(prefixes=(absent,)):
        assert importlib.util.find_spec(absent) is None
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(absent)


def test_an_imported_module_and_the_off_switch_leave_imports_alone(heavy: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OFF_SWITCH, "0")
    with deferred(prefixes=(heavy,)):
        importlib.import_module(f"{heavy}_consumer")
        assert imported(heavy)
    monkeypatch.delenv(OFF_SWITCH)
    real = sys.modules[heavy]
    with deferred(prefixes=(heavy,)):
        assert sys.modules[heavy] is real


LOAD_AND_STEP = textwrap.dedent("""
    import json, sys
    from lmql_core.loading.identifiers import parse_model_id
    from lmql_core.loading.model_host import load_model
    from lmql_core.plugin import StepInput
    from lmql_hf.loading.deferred import StandIn

    loaded = load_model(parse_model_id("lmql-tiny", None))
    logits = loaded.backend.forward([StepInput(seq_id=1, tokens=[1, 17, 29, 31])]).last_logits
    print(json.dumps({"argmax": int(logits[0].argmax()), "logits": [round(float(x), 4) for x in logits[0, :16]],
                      "stand_ins": [n for n, m in sys.modules.items() if isinstance(m, StandIn)],
                      "sklearn": sorted(n for n in sys.modules if n.split(".")[0] == "sklearn")}))
""")


def load_in_subprocess(defer: bool) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, OFF_SWITCH: "1" if defer else "0", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "plugins/hf/src"),
                                          os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", LOAD_AND_STEP], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.hf
def test_the_server_loads_lmql_tiny_alike_with_deferral_and_imports_no_sklearn() -> None:
    """Same logits as a load that imports everything transformers asks for; no stand-in left; and
    scikit-learn (where installed) is not imported by loading, whatever transformers' version."""
    deferred_load, plain_load = load_in_subprocess(True), load_in_subprocess(False)
    assert deferred_load["logits"] == plain_load["logits"]
    assert deferred_load["argmax"] == plain_load["argmax"]
    assert deferred_load["stand_ins"] == []
    assert deferred_load["sklearn"] == []
