"""check_backend: the example plugin and our backends pass it; broken backends fail it, by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmql_core.base.backend import StepInput, StepOutput
from lmql_core.loading.tokenizer import BytesTokenizer
from lmql_core.plugin import ConformanceError, check_backend

pytest.importorskip("lmql_example_backend")
from lmql_example_backend import CountingBackend  # noqa: E402

ALL_PASSED = {"contract": "passed", "generate": "passed", "batching": "passed", "score": "passed",
              "release": "passed", "tokenizer": "passed"}
NO_TOKENIZER = "skipped: the backend brings no tokenizer (register(..., tokenizer=) or tokenizer_json())"


def test_the_example_plugin_passes() -> None:
    outcome = check_backend(CountingBackend, "anything")
    assert outcome == dict(ALL_PASSED, **{"row errors": "skipped: no failing_prompt given", "tokenizer": NO_TOKENIZER})


def test_the_example_plugin_passes_the_row_error_check() -> None:
    outcome = check_backend(CountingBackend, "anything", fail_on=200, failing_prompt=[200])
    assert outcome == dict(ALL_PASSED, **{"row errors": "passed", "tokenizer": NO_TOKENIZER})


def test_the_example_plugin_by_name_passes_with_its_registered_tokenizer() -> None:
    outcome = check_backend("counting", "anything")
    assert outcome == dict(ALL_PASSED, **{"row errors": "skipped: no failing_prompt given"})


class ShiftedBytes(BytesTokenizer):
    """Bytes as ids 200..455: more ids than the counting backend's 256."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [i + 200 for i in super().encode(text)]

    def decode(self, ids: list[int]) -> str:
        return super().decode([i - 200 for i in ids])


class AsciiOnly(BytesTokenizer):
    """Loses what is not ASCII on the way back."""

    def decode(self, ids: list[int]) -> str:
        return super().decode([i for i in ids if i < 128])


def tokenizer_of(kind: type[BytesTokenizer], eos: int | None = None) -> Any:
    return lambda model, tokenizer=None: kind(256, eos)


class WiderVocabulary(CountingBackend):
    """Claims more token ids than its logits have columns."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.vocab_size = 300


class ExtraRow(CountingBackend):
    """Returns one logits row more than it was given inputs."""

    def forward(self, batch: list[StepInput]) -> StepOutput:
        output = super().forward(batch)
        output.last_logits = np.concatenate([output.last_logits, output.last_logits[:1]])
        return output


class Forgetful(CountingBackend):
    """Generates from the last token only while alone; in a batch, every row is the first one's."""

    def forward(self, batch: list[StepInput]) -> StepOutput:
        output = super().forward(batch)
        output.last_logits = np.repeat(output.last_logits[:1], len(batch), axis=0)
        return output


class NotANumber(CountingBackend):
    def forward(self, batch: list[StepInput]) -> StepOutput:
        output = super().forward(batch)
        output.last_logits = np.full_like(output.last_logits, np.nan)
        return output


@pytest.mark.parametrize(("factory", "options", "expected"), [
    (CountingBackend, {"leave_out": "vocab_size"}, "contract: .*vocab_size"),
    (CountingBackend, {"scores": False}, "score: forward ignored StepInput.all_logits"),
    (WiderVocabulary, {}, r"generate: forward returned last_logits of shape \(1, 256\).*vocab_size=300"),
    (ExtraRow, {}, r"generate: forward returned last_logits of shape \(2, 256\) for 1 inputs"),
    (Forgetful, {}, "batching: stream 1 of 4 concurrent ones against it alone: tokens"),
    (NotANumber, {}, "generate: GENERATE of .* failed: no token can be chosen"),
    (CountingBackend, {"fail_on": 200, "failing_prompt": [5]}, "row errors: failing_prompt .5. generated tokens"),
    (CountingBackend, {"tokenizer": tokenizer_of(BytesTokenizer, eos=5)},
     r"tokenizer: the registered tokenizer \(BytesTokenizer\): eos_token_id=5, but the backend's is None"),
    (CountingBackend, {"tokenizer": tokenizer_of(ShiftedBytes)},
     r"tokenizer: .*encode\('Hello, world!'\) gave ids \[272, 301, .*\] outside vocab_size=256"),
    (CountingBackend, {"tokenizer": tokenizer_of(AsciiOnly)},
     r"tokenizer: .*decode\(encode\('naïve café'\)\) gave 'nave caf'"),
], ids=["no-vocab_size", "ignores-all_logits", "wrong-vocab_size", "extra-row", "batch-mixes-rows", "nan-logits",
        "no-row-error", "tokenizer-eos", "tokenizer-ids-beyond-vocab", "tokenizer-loses-text"])
def test_a_broken_backend_fails_naming_the_problem(factory: Any, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConformanceError, match=expected):
        check_backend(factory, "anything", **options)


def test_hf_on_lmql_tiny_passes() -> None:
    pytest.importorskip("lmql_hf")
    pytest.importorskip("torch")
    outcome = check_backend("hf", "lmql-tiny")  # its factory and its tokenizer, as registered
    assert {k: v for k, v in outcome.items() if k != "row errors"} == ALL_PASSED


@pytest.mark.llamacpp
def test_llamacpp_on_its_gguf_test_model_passes(tmp_path_factory: pytest.TempPathFactory) -> None:
    for module in ("lmql_llamacpp", "llama_cpp", "gguf", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    from tests.llamacpp_models import hf_llama_folder
    from tests.test_llamacpp import KV_F32, N_CTX, export_gguf

    gguf: Path = export_gguf(hf_llama_folder(tmp_path_factory.mktemp("hf")), tmp_path_factory.mktemp("gguf"))
    outcome = check_backend("llama.cpp", str(gguf), n_ctx=N_CTX, **KV_F32)
    assert {k: v for k, v in outcome.items() if k != "row errors"} == ALL_PASSED
