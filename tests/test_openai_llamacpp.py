"""The ``openai:`` transport against a third-party server: llama-cpp-python's OpenAI-compatible
server (``python -m llama_cpp.server``) on the GGUF export of lmql-tiny. It takes prompts only
as text and names tokens only by their text, so the client maps both with the model's tokenizer.
Expected values: the same GGUF served by our LMTP server with the llama.cpp backend."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp.server.app")  # llama-cpp-python[server]
pytest.importorskip("gguf")
pytest.importorskip("lmql_llamacpp")

import lmql  # noqa: E402
from lmql_core.errors import ServerError  # noqa: E402
from lmql_core.lmtp.client.loop import run_sync  # noqa: E402
from lmql_core.openai_compat.client_features import ServerFeatureWarning  # noqa: E402
from tests.conftest import Server  # noqa: E402
from tests.llamacpp_models import hf_llama_folder  # noqa: E402
from tests.openai_suite import differences, program_names, run_programs  # noqa: E402
from tests.server_process import ServerProcess, free_port  # noqa: E402

pytestmark = pytest.mark.llamacpp
PROMPT = "Once upon a time"
N_CTX = 512
GGML_F32 = 0  # llama-cpp-python's type_k/type_v take ggml's type numbers
# Programs llama-cpp-python's server cannot run as LMTP does: it takes prompts only as text, and
# in these the model generated a value in another split than its text's own (e.g. "\n", "\t"
# where the text reads "\n\t"), so the server, tokenizing the text, continues from other tokens.
NOT_THE_TEXTS_OWN_SPLIT = "a prompt's tokens are not its text's tokenization; the server takes only text"
CANNOT: dict[str, str] = dict.fromkeys(
    ["condition_on_earlier_value", "nested_cot", "nested_args", "nested_three_times",
     "nested_outer_stops_in_value", "nested_outer_stops_no_return", "nested_outer_len_two_inner_vars",
     "nested_two_inner_vars", "decorator_post_int", "api_var_beam_loop"], NOT_THE_TEXTS_OWN_SPLIT)
# sampled: some draws split a value otherwise than its text (as above), others not, so a run may
# or may not reach what the server cannot be given
CANNOT.update(dict.fromkeys(["api_beam_sample_two_vars", "api_beam_sample_constrained"],
                            "sampled: " + NOT_THE_TEXTS_OWN_SPLIT))


class LlamaCppServer(ServerProcess):
    """A real ``python -m llama_cpp.server`` process, the model served under ``alias``; ready
    when it lists its models."""

    def __init__(self, gguf: Path, alias: str, *args: str) -> None:
        port = free_port()
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX),
                   "--type_k", str(GGML_F32), "--type_v", str(GGML_F32), "--verbose", "False", *args]
        super().__init__("llama-cpp-server", command, port)
        self.base_url = f"http://{self.endpoint}/v1"
        self.wait_ready(self.lists_models, timeout=120, poll=0.2)

    def lists_models(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(self.base_url + "/models", timeout=2):
            return True
        return False


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(hf_llama_folder(tmp_path_factory.mktemp("hf")))


@pytest.fixture(scope="module")
def gguf(folder: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "model.gguf"
    done = subprocess.run([sys.executable, "-m", "lmql_llamacpp.export", folder, str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shutil.copy(Path(folder) / "tokenizer.json", out.parent)  # lmql.tokenizer("llama.cpp:PATH") finds it
    return out


@pytest.fixture(scope="module")
def third_party(gguf: Path, folder: str) -> Iterator[LlamaCppServer]:
    server = LlamaCppServer(gguf, folder)  # served under the folder's name: openai:FOLDER
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lmtp(gguf: Path) -> Iterator[Server]:
    """The reference: the same GGUF, same context and KV cache types, over LMTP."""
    server = Server(f"llama.cpp:{gguf}", "--n_ctx", str(N_CTX), "--type_k", "f32", "--type_v", "f32")
    yield server
    assert server.stop() == 0, server.output()


def over_openai(server: LlamaCppServer, folder: str) -> Any:
    return lmql.model(f"openai:{folder}", endpoint=server.base_url, tokenizer=folder)


def over_lmtp(server: Server, gguf: Path, folder: str) -> Any:
    return lmql.model(f"llama.cpp:{gguf}", endpoint=server.endpoint, tokenizer=folder)


def test_the_probe_says_once_what_the_server_lacks(third_party: LlamaCppServer, folder: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = over_openai(third_party, folder)
        llm.generate_sync(PROMPT, max_tokens=2)
        llm.generate_sync(PROMPT, max_tokens=2)
        over_openai(third_party, folder).generate_sync(PROMPT, max_tokens=2)
    said = [str(w.message) for w in caught if issubclass(w.category, ServerFeatureWarning) and "lacks:" in str(w.message)]
    assert len(said) == 1, said
    assert "token-id prompts" in said[0] and "token ids in logprobs" in said[0]
    assert "echo" not in said[0]  # llama-cpp-python echoes the prompt with its log-probabilities


def test_generate_and_score_equal_lmtp(third_party: LlamaCppServer, lmtp: Server, gguf: Path,
                                       folder: str) -> None:
    ours, reference = over_openai(third_party, folder), over_lmtp(lmtp, gguf, folder)
    for prompt in (PROMPT, "The quick brown fox", "Q: What is two plus two?\nA:"):
        assert ours.generate_sync(prompt, max_tokens=24) == reference.generate_sync(prompt, max_tokens=24)
    assert ours.generate_sync(PROMPT) == reference.generate_sync(PROMPT)  # until EOS
    values = [" there", " you", " the end"]
    scores = ours.score_sync(PROMPT, values).token_scores
    expected = reference.score_sync(PROMPT, values).token_scores
    assert [len(s) for s in scores] == [len(s) for s in expected]
    for mine, theirs in zip(scores, expected, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-3)


def test_a_prompt_split_unlike_its_text_is_said(third_party: LlamaCppServer, folder: str) -> None:
    llm = over_openai(third_party, folder)
    tokenizer = llm.tokenizer
    ids = llm.encode_prompt("Pick: red\nAgain:") + [tokenizer.encode(c, add_special_tokens=False)[0] for c in "\n\t"]
    assert tokenizer.encode(tokenizer.decode(ids[1:]), add_special_tokens=False) != ids[1:]  # not the text's split

    async def one_token() -> list[int]:
        return [e["token"] async for e in llm._tokens(ids, max_tokens=1)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(run_sync(one_token())) == 1
    said = [str(w.message) for w in caught if issubclass(w.category, ServerFeatureWarning)]
    assert any("not its text's own tokenization" in s for s in said), said


def test_a_value_the_text_joins_to_the_prompt_cannot_be_scored(third_party: LlamaCppServer, folder: str) -> None:
    llm = over_openai(third_party, folder)
    tokenizer = llm.tokenizer
    apart = tokenizer.encode("The cat", add_special_tokens=False) + tokenizer.encode("s", add_special_tokens=False)
    assert tokenizer.encode("The cats", add_special_tokens=False) != apart  # "s" joins " cat" in the text
    with pytest.raises(ServerError, match="splits prompt and value together otherwise"):
        llm.score_sync("The cat", ["s"])
    sat = tokenizer.encode(" sat", add_special_tokens=False)  # a value that stays apart
    assert len(llm.score_sync("The cat", [" sat"]).token_scores[0]) == len(sat)


def test_streams_the_server_ends_for_each_other_go_on_one_at_a_time(third_party: LlamaCppServer, lmtp: Server,
                                                                    gguf: Path, folder: str) -> None:
    """llama-cpp-python's server ends a stream when another request comes (interrupt_requests)."""
    expected = over_lmtp(lmtp, gguf, folder).generate_sync(PROMPT, max_tokens=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = over_openai(third_party, folder).generate_sync(PROMPT, max_tokens=40, n=3)
    assert texts == [expected] * 3
    said = [str(w.message) for w in caught if issubclass(w.category, ServerFeatureWarning)]
    assert any("ends a stream when another request comes" in s for s in said), said


@pytest.mark.timeout(1500)  # the suite twice: 30 s to a few minutes on 2 shared cores
def test_the_query_suite_gives_lmtp_results(third_party: LlamaCppServer, lmtp: Server, gguf: Path,
                                            folder: str) -> None:
    selection = [f"-{name}" for name in CANNOT]
    ours = run_programs(third_party.base_url, folder, *selection)
    reference = run_programs(lmtp.endpoint, folder, *selection, served_model=f"llama.cpp:{gguf}")
    assert not differences(ours, reference, folder)
    assert len(ours) == len(program_names()) - len(CANNOT)


def test_without_logprobs_text_is_generated_and_scoring_is_a_clear_error(gguf: Path, folder: str,
                                                                         lmtp: Server) -> None:
    server = LlamaCppServer(gguf, folder, "--logits_all", "False")  # it then refuses logprobs
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            llm = over_openai(server, folder)
            text = llm.generate_sync(PROMPT, max_tokens=12)
        said = " ".join(str(w.message) for w in caught if issubclass(w.category, ServerFeatureWarning))
        assert "logprobs (tokens come from re-encoding the text" in said
        assert text == over_lmtp(lmtp, gguf, folder).generate_sync(PROMPT, max_tokens=12)
        with pytest.raises(ServerError, match="cannot score: it lacks echo with logprobs"):
            llm.score_sync(PROMPT, [" there"])
    finally:
        server.stop()
