"""Decode steps whose own graph is not captured yet replay their batch's cover, the graph
captured before "Ready" at the longest length (``--capture_all False``, issue 32's start-up): the
tokens must be transformers' own greedy ones, no step may run eagerly or capture while serving,
and once the engine has idled every bucket has its own graph and gives the same tokens again.
CUDA only (the captures need a GPU); the plan itself is checked on the CPU in
tests/test_hf_capture_plan.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

STREAMS, PROMPT, NEW = 5, 40, 100  # positions 40..140: the 64, 128 and 256 buckets of 8 rows


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2-cover")
    GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=4, n_head=4, vocab_size=1000)).save_pretrained(path)
    return path


def prompts() -> list[list[int]]:
    rng = torch.Generator().manual_seed(1)
    return [torch.randint(0, 1000, (PROMPT + 3 * i,), generator=rng).tolist() for i in range(STREAMS)]


def transformers_greedy(path: Path) -> list[list[int]]:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(path).cuda().float().eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts():
            ids = torch.tensor([prompt], device="cuda")
            generated = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
            out.append(generated[0, len(prompt):].tolist())
    return out


def backend_greedy(backend: object) -> list[list[int]]:
    from lmql_core.base.backend import StepInput

    given = prompts()
    out = backend.forward([StepInput(i, p) for i, p in enumerate(given)])  # type: ignore[attr-defined]
    tokens = [[int(out.last_logits[i].argmax())] for i in range(STREAMS)]
    for _ in range(NEW - 1):
        out = backend.forward([StepInput(i, t[-1:]) for i, t in enumerate(tokens)])  # type: ignore[attr-defined]
        for i, row in enumerate(tokens):
            row.append(int(out.last_logits[i].argmax()))
    backend.release_all(list(range(STREAMS)))  # type: ignore[attr-defined]
    return tokens


def test_uncaptured_buckets_replay_their_cover_with_transformers_tokens(gpt2_path: Path) -> None:
    from lmql_hf.backend import HFBackend

    expected = transformers_greedy(gpt2_path)
    backend = HFBackend(str(gpt2_path), cuda=True, dtype="float32", capture_all=False)
    plan = backend.graphs.plan
    longest = backend.graphs.lengths[-1]
    assert (8, longest) in plan.captured and (8, 128) not in plan.captured
    before = set(plan.captured)
    assert backend_greedy(backend) == expected
    assert plan.captured == before  # nothing captured while serving: the covers replayed
    assert not any(key[0] == 8 for key in plan.eager)  # and no step of 8 rows ran eagerly

    while (pause := backend.idle()) is not None:  # an idle engine captures every bucket left
        time.sleep(pause)
    assert {(8, 64), (8, 128), (8, 256)} <= plan.captured
    assert backend_greedy(backend) == expected


def test_a_model_capturing_while_idle_and_another_loading_and_serving_do_not_meet(gpt2_path: Path) -> None:
    """Two models in one process (in-process ``local:`` clients can load several): one captures
    its graphs in its idle time on another thread while the second loads (capturing its own) and
    decodes; neither capture fails and both give transformers' tokens."""
    import threading

    from lmql_hf.backend import HFBackend

    expected = transformers_greedy(gpt2_path)
    first = HFBackend(str(gpt2_path), cuda=True, dtype="float32", capture_all=False)
    errors: list[BaseException] = []

    def idle() -> None:
        try:
            while (pause := first.idle()) is not None:
                time.sleep(min(pause, 0.01))
        except BaseException as e:  # noqa: BLE001  (reported by the test below)
            errors.append(e)

    capturing = threading.Thread(target=idle)
    first.stepped_at = time.perf_counter() - 10  # idle long enough already: capture at once
    capturing.start()
    second = HFBackend(str(gpt2_path), cuda=True, dtype="float32", capture_all=False)
    assert backend_greedy(second) == expected
    capturing.join()
    assert not errors
    assert len(first.graphs.plan.captured) == len(first.graphs.plan.order)
    assert backend_greedy(first) == expected
