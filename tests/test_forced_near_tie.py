"""A near tie between the tokens a constraint allows is decided the same way whether the server
applies the mask or the client sends it as LMQL's ``logit_bias`` (+100 on the allowed tokens):
for the larger logit, as LMQL 0.7.3 does (it adds the +100 in float64). Issue 31: the engine
added 1e4 to the forced tokens in float32, which rounds their logits to ~1e-3, so two of them
7e-4 apart tied and the lower id won on the client path only.

The model is a GPT-2 built here whose final layer norm has weight 0 and bias e_0: every
position's hidden state is e_0, so its logits are column 0 of the (tied) embedding, set below."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lmql
from tests.conftest import Server

pytestmark = pytest.mark.hf
# the two logits at the first step where the paths parted on gpt2-micro-50k (issue 31)
LOWER, HIGHER = 0.20954075455665588, 0.210237056016922
OTHERS = -2.0


def single_token_words(tokenizer: Any, count: int) -> list[tuple[int, str]]:
    """The first ``count`` tokens (by id) that are a word of 3+ letters encoding back to themselves."""
    found = []
    for token in range(tokenizer.vocab_size):
        text = tokenizer.decode([token])
        if len(text) >= 3 and text.isalpha() and tokenizer.encode(text, add_special_tokens=False) == [token]:
            found.append((token, text))
            if len(found) == count:
                return found
    raise AssertionError("the tokenizer has too few single-token words")


@pytest.fixture(scope="module")
def near_tie_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(folder, the word with the lower id and lower logit, the word with the higher id and higher)."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.bundled import bundled_path

    tiny = Path(bundled_path("lmql-tiny"))  # type: ignore[arg-type]
    tokenizer = JsonTokenizer.from_file(tiny / "tokenizer.json")
    (low, low_text), (high, high_text) = single_token_words(tokenizer, 2)
    folder = tmp_path_factory.mktemp("near-tie")
    config = GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=tokenizer.vocab_size,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = OTHERS
        model.transformer.wte.weight[low, 0] = LOWER
        model.transformer.wte.weight[high, 0] = HIGHER
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, folder / name)
    return folder, low_text, high_text


@pytest.fixture(scope="module")
def near_tie_server(near_tie_model: tuple[Path, str, str]) -> Iterator[Server]:
    server = Server(str(near_tie_model[0]))
    yield server
    assert server.stop() == 0, server.output()


def test_the_built_model_puts_the_two_words_7e_4_apart(near_tie_model: tuple[Path, str, str]) -> None:
    """The premise, in transformers: the higher word wins, by less than float32 keeps beside 1e4."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from lmql_core.loading.tokenizer import JsonTokenizer

    folder, low_text, high_text = near_tie_model
    tokenizer = JsonTokenizer.from_file(folder / "tokenizer.json")
    low, high = (tokenizer.encode(t, add_special_tokens=False)[0] for t in (low_text, high_text))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Pick:", add_special_tokens=False)])).logits[0, -1]
    assert float(logits[high]) - float(logits[low]) == pytest.approx(HIGHER - LOWER, abs=1e-7)
    assert int(logits.argmax()) == high and low < high
    plus = np.float32(1e4)
    assert np.float32(LOWER) + plus == np.float32(HIGHER) + plus  # what the old bias did to them


@pytest.mark.parametrize("server_constraints", ["on", "off"])
def test_an_in_choice_between_near_tied_tokens_takes_the_larger_on_both_paths(
        near_tie_model: tuple[Path, str, str], near_tie_server: Server, server_constraints: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, low_text, high_text = near_tie_model
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", server_constraints)
    model = lmql.model(str(folder), endpoint=near_tie_server.endpoint, tokenizer=str(folder))
    program = f'argmax\n    "Pick:[X]"\nwhere\n    X in ["{low_text}", "{high_text}"]\n'
    assert lmql.run_sync(program, model=model).variables["X"] == high_text
