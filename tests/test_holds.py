"""A stream whose constraint needs a slow mask not computed yet (a REGEX state's first) is held
out of the batch while a thread beside the engine's computes it (engine/holds.py), on the engine
with lmql-tiny's HF backend; other streams go on meanwhile.

Expected values come from elsewhere: transformers' greedy choices under LMQL's REGEX mask (each
token whose text keeps the value a partial match, the end on a full match, a single allowed token
taken without a choice), computed here with the ``regex`` module; a free stream's, transformers'
greedy choices with the end banned."""

from __future__ import annotations

from typing import Any

import pytest
import regex

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

from lmql_core.constraints import kinds  # noqa: E402
from lmql_core.constraints.vocabulary import Vocabulary  # noqa: E402
from lmql_core.engine.engine import Engine  # noqa: E402
from lmql_core.engine.mask_constraint import MaskConstraint, mask_words  # noqa: E402
from lmql_core.engine.sequence import SamplingParams, Sequence  # noqa: E402
from lmql_core.loading.tokenizer import JsonTokenizer  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests.conftest import StreamEvents  # noqa: E402

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def tokenizer() -> JsonTokenizer:
    return JsonTokenizer.from_file(bundled_path("lmql-tiny") / "tokenizer.json")  # type: ignore[operator]


@pytest.fixture(scope="module")
def model() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(bundled_path("lmql-tiny")).eval()


def lmql_regex_greedy(model: Any, tokenizer: JsonTokenizer, prompt: list[int], pattern: str,
                      limit: int) -> list[int]:
    texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    eos, generated = tokenizer.eos_token_id, []
    while len(generated) < limit:
        text = tokenizer.decode(generated)
        allowed = [i for i, t in enumerate(texts) if i != eos and regex.fullmatch(pattern, text + t, partial=True)]
        full = regex.fullmatch(pattern, text) is not None
        if not allowed:
            break
        if len(allowed) == 1 and not full:
            generated.append(allowed[0])
            continue
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, -1]
        candidates = allowed + ([eos] if full else [])
        chosen = max(candidates, key=lambda i: float(logits[i]))
        if chosen == eos:
            break
        generated.append(chosen)
    return generated


def free_greedy(model: Any, prompt: list[int], eos: int, count: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(count):
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0, -1]
        logits[eos] = float("-inf")
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("chained", [False, True], ids=["steps", "chained-steps"])
def test_a_stream_waiting_for_slow_masks_is_held_and_chooses_as_transformers_under_lmqls_mask(
        tokenizer: JsonTokenizer, model: Any, chained: bool) -> None:
    """Every REGEX state's first mask is slow: the engine thread leaves each to the constraints'
    thread, the stream sitting out meanwhile (with chained steps: its row of the step in flight
    dropped); its tokens are still LMQL's greedy ones, and a free stream beside it decodes as
    transformers does."""
    # a pattern of this test's own, so that none of its masks is remembered yet
    pattern = r"[0-9]{2}:[0-9]{2} ?(am|pm) sharp" + ("!" if chained else "")
    engine = Engine(HFBackend(str(bundled_path("lmql-tiny")), chain_steps=chained))
    try:
        vocab = Vocabulary.of(tokenizer)
        vocab.prepare()
        eos = tokenizer.eos_token_id
        timed, free = tokenizer.encode("The meeting starts at"), tokenizer.encode("Once upon a time")
        constraint = MaskConstraint(kinds.Regex(pattern), vocab, mask_words(engine.backend.vocab_size, vocab))
        streams = StreamEvents(2)
        engine.submit(Sequence("timed", timed, SamplingParams(max_tokens=30, constraint=constraint), streams))
        engine.submit(Sequence("free", free, SamplingParams(max_tokens=24, logit_bias={eos: -100.0}), streams))
        assert streams.done.wait(120), "the streams did not end"
        assert engine.stats.sequences_held >= 3  # (a new state at nearly every token)
        assert engine.stats.steps_chained > 0 or not chained
        mine = streams.events["timed"]
        assert not any(e.error for e in mine) and mine[-1].finish_reason is not None
        assert [e.token for e in mine] == lmql_regex_greedy(model, tokenizer, timed, pattern, 30)
        assert regex.fullmatch(pattern, tokenizer.decode([e.token for e in mine]))
        assert [e.token for e in streams.events["free"]] == free_greedy(model, free, eos, 24)
    finally:
        engine.stop()
