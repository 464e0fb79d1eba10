"""The llama.cpp backend on a GGUF export of an HF Llama checkpoint: it must agree with the HF
backend on the same weights, served (a real `lmql serve-model` process) and in-process."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
pytest.importorskip("lmql_hf")
pytest.importorskip("lmql_llamacpp")

import lmql  # noqa: E402
from lmql_core.base.backend import StepInput  # noqa: E402
from lmql_core.errors import LMQLError, ServerError, TokenizerNotFound  # noqa: E402
from lmql_core.lmtp.client.loop import run_sync  # noqa: E402
from lmql_core.loading.tokenizer import load_tokenizer  # noqa: E402
from lmql_llamacpp.backend import ContextOverflow, LlamaCppBackend  # noqa: E402
from tests.conftest import Server  # noqa: E402
from tests.llamacpp_models import hf_llama_folder  # noqa: E402

pytestmark = pytest.mark.llamacpp
PROMPTS = ["The quick model", "Every server reads", "A small red dog runs under the bridge and",
           "Seven"]
TOL = 1e-3
N_CTX = 512
# F32 weights and an F32 KV cache: llama.cpp then matches HF to ~1e-5 (an F16 cache: ~1e-2)
KV_F32 = {"type_k": "f32", "type_v": "f32"}


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_llama_folder(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def gguf_path(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export, through the exporter's command line, alone in its folder (no tokenizer.json)."""
    return export_gguf(hf_folder, tmp_path_factory.mktemp("gguf"))


def export_gguf(hf_folder: Path, folder: Path) -> Path:
    out = folder / "model.gguf"
    done = subprocess.run([sys.executable, "-m", "lmql_llamacpp.export", str(hf_folder), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def hf_llm(hf_folder: Path) -> lmql.LLM:
    return lmql.model(f"local:{hf_folder}")


@pytest.fixture(scope="session")
def local_llm(gguf_path: Path, hf_folder: Path) -> lmql.LLM:
    return lmql.model(f"local:llama.cpp:{gguf_path}", tokenizer=str(hf_folder), n_ctx=N_CTX, **KV_F32)


@pytest.fixture(scope="session")
def server(gguf_path: Path) -> Iterator[Server]:
    # two KV slots for up to five streams: concurrent streams exercise swapping sequences out
    server = Server(f"llama.cpp:{gguf_path}", "--n_ctx", str(N_CTX), "--n_seq_max", "2",
                    "--type_k", "f32", "--type_v", "f32")
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="session")
def served_llm(server: Server, gguf_path: Path, hf_folder: Path) -> lmql.LLM:
    return lmql.model(f"llama.cpp:{gguf_path}", endpoint=server.endpoint, tokenizer=str(hf_folder))


@pytest.fixture(params=["local", "served"])
def llm(request: pytest.FixtureRequest) -> lmql.LLM:
    return request.getfixturevalue(f"{request.param}_llm")


def request_of(llm: lmql.LLM, prompt: str | list[int], max_tokens: int, **params: Any) -> dict[str, Any]:
    ids = llm.encode_prompt(prompt) if isinstance(prompt, str) else prompt
    return {"model": llm.model_id.served_name, "prompt": ids, "max_tokens": max_tokens,
            "temperature": 0.0, **params}


async def _entries(llm: lmql.LLM, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [e async for e in llm.client.request("GENERATE", request)]


def entries(llm: lmql.LLM, prompt: str | list[int], max_tokens: int = 16, **params: Any) -> list[dict[str, Any]]:
    """The TOKEN entries of one GENERATE stream."""
    return run_sync(_entries(llm, request_of(llm, prompt, max_tokens, **params)))


def assert_same_stream(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [e["token"] for e in got] == [e["token"] for e in expected]
    assert [e["finish_reason"] for e in got] == [e["finish_reason"] for e in expected]
    for g, x in zip(got, expected, strict=True):
        assert g["logprob"] == pytest.approx(x["logprob"], abs=TOL)


# --- the export --------------------------------------------------------------------------------


def test_export_loads_with_the_hf_models_shape(served_llm: lmql.LLM, hf_llm: lmql.LLM,
                                               gguf_path: Path) -> None:
    info = served_llm.model_info_sync()["model_info"]
    reference = hf_llm.model_info_sync()["model_info"]
    assert info["backend"] == "llama.cpp" and info["distribution"] == "lmql-llamacpp"
    assert info["model"] == served_llm.model_id.served_name == f"llama.cpp:{gguf_path}"
    assert (info["vocab_size"], info["eos_token_id"]) == (reference["vocab_size"], reference["eos_token_id"])
    assert info["max_context"] == info["n_ctx"] == N_CTX
    assert info["n_seq_max"] == 2
    assert info["constructor"].startswith(f"Llama(model_path={str(gguf_path)!r}, n_ctx={N_CTX}, ")
    assert "type_k=0" in info["constructor"] and "verbose=False" in info["constructor"]
    assert "F32" in info["model_desc"]
    assert info["n_gpu_layers"] == 0 and info["versions"]["llama-cpp-python"]


# --- agreement with the HF backend -------------------------------------------------------------


def test_greedy_tokens_and_logprobs_equal_hf(llm: lmql.LLM, hf_llm: lmql.LLM) -> None:
    for prompt in PROMPTS:
        expected = entries(hf_llm, prompt, max_tokens=24)
        assert len(expected) == 24 or expected[-1]["finish_reason"] == "stop"
        assert_same_stream(entries(llm, prompt, max_tokens=24), expected)


def test_scores_equal_hf(llm: lmql.LLM, hf_llm: lmql.LLM) -> None:
    values = [" runs over the river", " sees a cat.", "!"]
    got = llm.score_sync(PROMPTS[0], values).token_scores
    expected = hf_llm.score_sync(PROMPTS[0], values).token_scores
    assert [len(s) for s in got] == [len(s) for s in expected]
    for g, x in zip(got, expected, strict=True):
        assert g == pytest.approx(x, abs=TOL)


def test_concurrent_streams_beyond_the_kv_slots_equal_hf(served_llm: lmql.LLM, hf_llm: lmql.LLM) -> None:
    prompts = PROMPTS + ["The client keeps a blue number"]  # five streams, two slots

    requests = [request_of(served_llm, p, 12) for p in prompts]

    async def all_streams() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*(_entries(served_llm, r) for r in requests)))

    for got, prompt in zip(run_sync(all_streams()), prompts, strict=True):
        assert_same_stream(got, entries(hf_llm, prompt, max_tokens=12))


def test_streaming_text_equals_generate(served_llm: lmql.LLM, local_llm: lmql.LLM) -> None:
    streamed = "".join(served_llm.stream_sync(PROMPTS[2], max_tokens=20))
    assert streamed == served_llm.generate_sync(PROMPTS[2], max_tokens=20)
    assert streamed == local_llm.generate_sync(PROMPTS[2], max_tokens=20)


def test_sampling_gives_valid_tokens_and_finish_reasons(llm: lmql.LLM) -> None:
    got = entries(llm, PROMPTS[1], max_tokens=10, temperature=1.0)
    vocab = llm.model_info_sync()["model_info"]["vocab_size"]
    assert all(0 <= e["token"] < vocab and e["logprob"] <= 0 for e in got)
    assert [e["finish_reason"] for e in got[:-1]] == [None] * (len(got) - 1)
    assert got[-1]["finish_reason"] == ("length" if len(got) == 10 else "stop")


# --- per-stream settings -----------------------------------------------------------------------


def test_logit_bias_bans_and_forces(llm: lmql.LLM, hf_llm: lmql.LLM) -> None:
    plain = entries(llm, PROMPTS[0], max_tokens=8)
    banned = plain[0]["token"]
    ban = {"logit_bias": {str(banned): -100}}
    got = entries(llm, PROMPTS[0], max_tokens=8, **ban)
    assert banned not in [e["token"] for e in got]
    assert_same_stream(got, entries(hf_llm, PROMPTS[0], max_tokens=8, **ban))
    forced = 42
    got = entries(llm, PROMPTS[0], max_tokens=5, logit_bias={str(forced): 100})
    assert [e["token"] for e in got] == [forced] * 5
    assert all(e["logprob"] == pytest.approx(0.0, abs=1e-6) for e in got)


def test_top_logprobs_are_sorted_and_hold_the_chosen_token(llm: lmql.LLM, hf_llm: lmql.LLM) -> None:
    got = entries(llm, PROMPTS[3], max_tokens=6, top_logprobs=5)
    expected = entries(hf_llm, PROMPTS[3], max_tokens=6, top_logprobs=5)
    for entry, reference in zip(got, expected, strict=True):
        top = entry["top_logprobs"]
        assert len(top) == 5 and str(entry["token"]) in top
        assert top[str(entry["token"])] == entry["logprob"] == max(top.values())
        assert list(top.values()) == sorted(top.values(), reverse=True)
        assert set(top) == set(reference["top_logprobs"])
        for token, lp in top.items():
            assert lp == pytest.approx(reference["top_logprobs"][token], abs=TOL)


# --- tokenizers and identifiers ----------------------------------------------------------------


def test_missing_tokenizer_says_what_to_pass(gguf_path: Path) -> None:
    """What a client hears when neither it nor the server (an LMQL 0.7 one, say) has the tokenizer."""
    with pytest.raises(TokenizerNotFound) as caught:
        load_tokenizer(str(gguf_path), None, "llama.cpp")
    message = str(caught.value)
    assert str(gguf_path) in message
    assert 'tokenizer="path/to/folder-with-tokenizer.json"' in message
    assert "--tokenizer" in message


def test_tokenizer_next_to_the_gguf_file_is_found(tmp_path: Path, gguf_path: Path, hf_folder: Path,
                                                  served_llm: lmql.LLM) -> None:
    (tmp_path / "model.gguf").symlink_to(gguf_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_folder / name, tmp_path / name)
    found = load_tokenizer(str(tmp_path / "model.gguf"), None, "llama.cpp")
    assert found.fingerprint() == served_llm.tokenizer.fingerprint()
    ids = served_llm.encode_prompt(PROMPTS[2])
    assert [found.bos_token_id, *found.encode(PROMPTS[2], add_special_tokens=False)] == ids


def test_server_hands_out_the_vocabulary_in_the_gguf_file(server: Server, gguf_path: Path,
                                                         hf_llm: lmql.LLM, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No tokenizer= and no tokenizer.json next to the file: the server rebuilds the tokenizer from
    the GGUF vocabulary, and it is the HF model's (same fingerprint, same prompt ids)."""
    monkeypatch.setenv("LMQL_CACHE_DIR", str(tmp_path))
    llm = lmql.model(f"llama.cpp:{gguf_path}", endpoint=server.endpoint)
    info = llm.model_info_sync()["model_info"]
    assert info["extensions"] == {"tokenizer": hf_llm.tokenizer.fingerprint(), "text": True, "cancel": True,
                                  "constraints": ["regex", "grammar", "json_schema"], "template": 1,
                                  "chat": False}
    for prompt in [*PROMPTS, "naïve café 日本語 🙂\n\n  spaces"]:
        assert llm.encode_prompt(prompt) == hf_llm.encode_prompt(prompt)
    assert llm.generate_sync(PROMPTS[2], max_tokens=12) == hf_llm.generate_sync(PROMPTS[2], max_tokens=12)


def test_identifier_is_kept_when_the_path_is_not_on_the_client(server: Server, hf_folder: Path) -> None:
    elsewhere = "llama.cpp:/models/not/here.gguf"
    llm = lmql.model(elsewhere, endpoint=server.endpoint, tokenizer=str(hf_folder))
    assert llm.model_id.served_name == elsewhere and llm.model_id.backend == "llama.cpp"
    with pytest.raises(ServerError, match="not 'llama.cpp:/models/not/here.gguf'"):
        llm.generate_sync("Hi", max_tokens=2)


# --- context limits ----------------------------------------------------------------------------


def test_overlong_prompt_is_refused_and_the_server_keeps_serving(server: Server,
                                                                 served_llm: lmql.LLM) -> None:
    prompt = " the dog" * N_CTX
    assert len(served_llm.encode_prompt(prompt)) > N_CTX
    with pytest.raises(ServerError, match=f"context holds {N_CTX}"):
        served_llm.generate_sync(prompt, max_tokens=4)
    with pytest.raises(ServerError, match=f"context holds {N_CTX}"):
        served_llm.score_sync(" the dog" * (N_CTX // 4), " the dog" * (N_CTX // 4))
    assert server.alive()
    assert len(entries(served_llm, PROMPTS[0], max_tokens=3)) == 3


def test_generation_stops_at_the_end_of_the_context(served_llm: lmql.LLM, server: Server) -> None:
    the = served_llm.tokenizer.encode(" the", add_special_tokens=False)[:1]
    prompt = served_llm.encode_prompt("") + the * (N_CTX - 3)
    assert len(prompt) == N_CTX - 2
    no_eos = {str(served_llm.tokenizer.eos_token_id): -100}
    got = entries(served_llm, prompt, max_tokens=10, logit_bias=no_eos)
    assert [e["finish_reason"] for e in got] == [None, "length"]
    assert server.alive()


# --- the backend object itself -----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot(gguf_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(str(gguf_path), n_ctx=64, n_seq_max=1, **KV_F32)
    yield backend
    backend.close()


def test_swapped_sequences_continue_exactly(one_slot: LlamaCppBackend) -> None:
    """Three sequences take turns in one KV slot; each must match a single pass over its tokens."""
    import numpy as np

    seqs = {101: [0, 5, 6, 7], 102: [0, 9, 10], 103: [0, 11]}
    steps = [[101, 102], [103], [101, 102, 103], [102], [101]]
    more = iter(range(20, 60))
    fed: dict[int, list[int]] = {k: [] for k in seqs}
    last: dict[int, Any] = {}
    for step in steps:
        batch = [StepInput(s, seqs[s] if not fed[s] else [next(more)]) for s in step]
        out = one_slot.forward(batch)
        for row, item in enumerate(batch):
            fed[item.seq_id] += item.tokens
            last[item.seq_id] = out.last_logits[row]
    for seq_id, tokens in fed.items():
        one_slot.release(seq_id)
        whole = one_slot.forward([StepInput(seq_id, tokens, all_logits=True)])
        assert np.abs(whole.all_logits[seq_id][-1] - last[seq_id]).max() < 1e-4
        assert whole.all_logits[seq_id].shape == (len(tokens), one_slot.vocab_size)
        one_slot.release(seq_id)


def test_backend_refuses_overflow_and_bad_tokens_without_crashing(one_slot: LlamaCppBackend) -> None:
    one_slot.forward([StepInput(7, [1] * 64)])
    with pytest.raises(ContextOverflow, match="holds 64 per sequence"):
        one_slot.forward([StepInput(7, [1])])
    with pytest.raises(LMQLError, match="outside this model's vocabulary"):
        one_slot.forward([StepInput(8, [one_slot.vocab_size])])
    one_slot.release(7)
    assert one_slot.forward([StepInput(9, [1, 2, 3])]).last_logits.shape == (1, one_slot.vocab_size)
    one_slot.release(9)


def test_loader_options(gguf_path: Path, hf_folder: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = LlamaCppBackend(str(gguf_path), cuda=True, dtype="float16")
    try:
        assert any("dtype='float16' is ignored" in str(w.message) for w in caught)
        assert backend.info()["n_gpu_layers"] == -1
        assert "n_gpu_layers=-1" in backend.info()["constructor"]
        trained = json.loads((hf_folder / "config.json").read_text())["max_position_embeddings"]
        assert backend.max_context == min(trained, 2048)  # the default n_ctx
    finally:
        backend.close()
    with pytest.raises(LMQLError, match="unknown llama.cpp loader argument.*n_ctxx"):
        LlamaCppBackend(str(gguf_path), n_ctxx=64)
    with pytest.raises(LMQLError, match="no GGUF file"):
        LlamaCppBackend(str(gguf_path) + ".missing")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(LMQLError, match="llama.cpp could not read"):
        LlamaCppBackend(str(tmp_path / "bad.gguf"))


def test_serve_model_reports_a_bad_loader_argument(gguf_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"Error: the llama.cpp backend has no option --n_ctxx; its "
                       r"options: --n_seq_max \(int\), .*; it also takes .*--n_batch, "):
        Server(f"llama.cpp:{gguf_path}", "--n_ctxx", "64")


def test_constraints_on_the_gguf_vocabulary(server: Server, gguf_path: Path) -> None:
    """The server's grammars compile with the tokenizer rebuilt from the GGUF file (issue 31)."""
    import re

    llm = lmql.model(f"llama.cpp:{gguf_path}", endpoint=server.endpoint)
    text = llm.generate_sync("Once upon a time", max_tokens=20, regex=r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text), text


def test_templates_go_on_without_passing_caches_on(server: Server, served_llm: lmql.LLM,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's backend cannot pass a sequence's cache on to the next (``TakesOver``): a
    template's next holes start as new sequences there, and every program gives the client
    path's values and prompt."""
    from tests.conftest import server_metric
    from tests.template_programs import PROGRAMS, program, run

    served = served_llm.model_id.served_name
    names = ("four_variables", "stops_at", "later_hole_sees_earlier")
    before = server_metric(server, "lmql_engine_sequences_taken_over", served)
    results = {name: run(program(*PROGRAMS[name]), served_llm) for name in names}
    assert all(requests == 1 for _, _, requests in results.values())  # each one template GENERATE
    assert server_metric(server, "lmql_engine_sequences_taken_over", served) == before
    monkeypatch.setenv("LMQL_SERVER_CONSTRAINTS", "off")
    assert {name: r[:2] for name, r in results.items()} == {
        name: run(program(*PROGRAMS[name]), served_llm)[:2] for name in names}
