"""OpenAI's HTTP API of `lmql serve-model`, driven by the official `openai` client: what it answers
equals what LMTP answers for the same request, and what transformers computes where it can."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Server, read_metric
from tests.openai_fixtures import (
    CHAT_TEMPLATE,
    TOKEN,
    bundled_tiny,
    client,
    lmtp_stream,
    openai,
    post,
)

PROMPT = "Once upon a time"
EOS = 2  # lmql-tiny's


def greedy(server: Server, **options: Any) -> list[dict[str, Any]]:
    """LMTP's greedy continuation of PROMPT in text mode: the reference."""
    return lmtp_stream(server, {"model": "lmql-tiny", "text": PROMPT, "temperature": 0, **options})


def test_models_lists_the_served_model(tiny: Server) -> None:
    models = client(tiny).models.list().data
    assert [m.id for m in models] == ["lmql-tiny"]


def test_greedy_completion_equals_lmtp(tiny: Server) -> None:
    reference = greedy(tiny, max_tokens=12, top_logprobs=3)
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                             logprobs=3)
    choice = answer.choices[0]
    assert choice.text == "".join(e["text"] for e in reference)
    assert choice.finish_reason == "length"
    assert choice.logprobs.token_logprobs == pytest.approx([e["logprob"] for e in reference], abs=1e-5)
    for top, entry in zip(choice.logprobs.top_logprobs, reference, strict=True):
        assert sorted(top.values()) == pytest.approx(sorted(entry["top_logprobs"].values()), abs=1e-5)
    assert len(choice.logprobs.text_offset) == 12
    prompt_tokens = len(tokenize(tiny, PROMPT))
    assert answer.usage.model_dump() == {"prompt_tokens": prompt_tokens, "completion_tokens": 12,
                                         "total_tokens": prompt_tokens + 12, **_no_details(answer.usage)}


def tokenize(server: Server, text: str, bos: bool = True) -> list[int]:
    status, answer = post(server, "/tokenize", {"model": "lmql-tiny", "prompt": text, "add_special_tokens": bos})
    assert status == 200, answer
    return list(answer["tokens"])


def _no_details(usage: Any) -> dict[str, Any]:
    return {k: None for k in ("completion_tokens_details", "prompt_tokens_details") if k in usage.model_dump()}


def test_tokens_by_id_as_vllm_names_them(tiny: Server) -> None:
    reference = greedy(tiny, max_tokens=5, top_logprobs=2)
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=5, temperature=0,
                                             logprobs=2, extra_body={"return_tokens_as_token_ids": True})
    logprobs = answer.choices[0].logprobs
    assert logprobs.tokens == [f"token_id:{e['token']}" for e in reference]
    assert [sorted(top) for top in logprobs.top_logprobs] == \
        [sorted(f"token_id:{t}" for t in e["top_logprobs"]) for e in reference]
    assert answer.choices[0].text == "".join(e["text"] for e in reference)


def test_prompts_as_token_ids_and_lists(tiny: Server) -> None:
    ids = tokenize(tiny, PROMPT)
    texts = [e["text"] for e in greedy(tiny, max_tokens=6)]
    by_text = client(tiny).completions.create(model="lmql-tiny", prompt=[PROMPT, "Hello"], max_tokens=6,
                                              temperature=0)
    by_ids = client(tiny).completions.create(model="lmql-tiny", prompt=[ids, ids], max_tokens=6, temperature=0)
    assert [c.index for c in by_text.choices] == [0, 1]
    assert by_text.choices[0].text == "".join(texts)
    assert [c.text for c in by_ids.choices] == ["".join(texts)] * 2


def test_echo_gives_the_prompts_logprobs_as_transformers(tiny: Server) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    ids = tokenize(tiny, PROMPT)
    model = AutoModelForCausalLM.from_pretrained(bundled_tiny()).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    expected = [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]
    scored = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    choice = scored.choices[0]
    assert choice.text == PROMPT
    assert choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert scored.usage.completion_tokens == 0
    continued = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=4, echo=True,
                                                logprobs=1, temperature=0)
    text = continued.choices[0].text
    assert text.startswith(PROMPT) and text[len(PROMPT):] == "".join(e["text"] for e in greedy(tiny, max_tokens=4))
    assert len(continued.choices[0].logprobs.tokens) == len(ids) + 4


def test_streaming_equals_the_whole_answer(tiny: Server) -> None:
    whole = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=10, temperature=0,
                                            logprobs=2)
    chunks = list(client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=10, temperature=0,
                                                  logprobs=2, stream=True, stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert [lp for c in text_chunks for lp in c.choices[0].logprobs.token_logprobs] == \
        whole.choices[0].logprobs.token_logprobs
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices


def test_stop_strings_cut_the_text(tiny: Server) -> None:
    full = "".join(e["text"] for e in greedy(tiny, max_tokens=20))
    stop = full[8:11]  # three characters from the middle of the greedy text
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=20, temperature=0,
                                             stop=[stop, "never appears"])
    assert answer.choices[0].text == full[: full.index(stop)]
    assert answer.choices[0].finish_reason == "stop"
    streamed = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=20, temperature=0,
                                               stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_stop_token_ids_end_the_choice(tiny: Server) -> None:
    reference = greedy(tiny, max_tokens=10)
    third = reference[2]["token"]
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=10, temperature=0,
                                             extra_body={"stop_token_ids": [third]})
    assert answer.choices[0].text == "".join(e["text"] for e in reference[:2])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 3


def test_n_choices_with_a_seed_repeat_exactly(tiny: Server) -> None:
    def sample(seed: int) -> list[str]:
        answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=12, temperature=1.0,
                                                 n=3, seed=seed)
        assert [c.index for c in answer.choices] == [0, 1, 2]
        return [c.text for c in answer.choices]

    first = sample(7)
    assert sample(7) == first  # the same seed: the same texts
    alone = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=12, temperature=1.0,
                                            seed=7)
    assert alone.choices[0].text == first[0]  # choice 0 ran in a batch of 3, this one alone
    assert len(set(first)) > 1  # each choice its own noise
    assert sample(8) != first


def test_logit_bias_as_lmtp(tiny: Server) -> None:
    first = greedy(tiny, max_tokens=1)[0]["token"]
    bias = {str(first): -100}
    reference = greedy(tiny, max_tokens=5, logit_bias=bias)
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=5, temperature=0,
                                             logit_bias=bias, logprobs=0)
    assert answer.choices[0].text == "".join(e["text"] for e in reference)
    assert answer.choices[0].logprobs.token_logprobs == pytest.approx([e["logprob"] for e in reference], abs=1e-5)
    forced = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=3, temperature=1.0,
                                             logit_bias={"300": 100})
    assert tokenize(tiny, forced.choices[0].text, bos=False) == [300, 300, 300]


def test_top_k_one_samples_the_greedy_text(tiny: Server) -> None:
    expected = "".join(e["text"] for e in greedy(tiny, max_tokens=8))
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=8, temperature=1.5,
                                             extra_body={"top_k": 1})
    assert answer.choices[0].text == expected


# --- chat ------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A story, please."}]


def template_ids(model: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_chat_renders_the_models_template(tiny: Server, guarded: Server) -> None:
    ids = template_ids(guarded.model)  # type: ignore[attr-defined]
    reference = lmtp_stream(tiny, {"model": "lmql-tiny", "prompt": ids, "max_tokens": 10, "top_logprobs": 2})
    answer = client(guarded, TOKEN).chat.completions.create(
        model=guarded.model, messages=MESSAGES, max_tokens=10, temperature=0,  # type: ignore[attr-defined]
        logprobs=True, top_logprobs=2)
    choice = answer.choices[0]
    reference_tokens = [e["token"] for e in reference if e["token"] != EOS]
    from transformers import AutoTokenizer

    expected_text = AutoTokenizer.from_pretrained(guarded.model).decode(reference_tokens)  # type: ignore[attr-defined]
    assert choice.message.role == "assistant" and choice.message.content == expected_text
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx([e["logprob"] for e in reference], abs=1e-5)
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert answer.usage.prompt_tokens == len(ids)


def test_chat_streams_and_n(guarded: Server) -> None:
    chat = client(guarded, TOKEN).chat.completions
    model = guarded.model  # type: ignore[attr-defined]
    whole = chat.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0, n=2)
    assert [c.message.content for c in whole.choices] == [whole.choices[0].message.content] * 2
    chunks = list(chat.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
                              stop=["never appears"]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_without_a_template_is_a_clear_error(tiny: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="'lmql-tiny' has no chat template"):
        client(tiny).chat.completions.create(model="lmql-tiny", messages=MESSAGES)


# --- errors as the client sees them ----------------------------------------------------------

def test_errors_reach_the_client_as_its_exceptions(tiny: Server, guarded: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="not 'gpt-4'"):
        client(tiny).completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=600)
    with pytest.raises(openai.BadRequestError, match="'temperature' must not be negative"):
        client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, temperature=-1)
    with pytest.raises(openai.AuthenticationError, match="needs an API key"):
        client(guarded, "wrong").models.list()
    with pytest.raises(openai.RateLimitError, match="--max-streams"):
        client(guarded, TOKEN).completions.create(model=guarded.model, prompt=PROMPT, n=5)  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError, match="larger than this server accepts") as error:
        client(guarded, TOKEN).completions.create(model=guarded.model, prompt="x" * 5000)  # type: ignore[attr-defined]
    assert error.value.status_code == 413


def test_metrics_count_requests_by_transport(tiny: Server) -> None:
    import urllib.request

    def metrics() -> str:
        with urllib.request.urlopen(f"http://{tiny.endpoint}/metrics", timeout=10) as response:
            return response.read().decode()

    greedy(tiny, max_tokens=1)  # over LMTP
    before = read_metric(metrics(), "lmql_requests", "openai", label="transport")
    client(tiny).models.list()
    client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=1)
    after = metrics()
    assert read_metric(after, "lmql_requests", "openai", label="transport") == before + 2
    assert read_metric(after, "lmql_clients", "openai", label="transport") == 0
    assert read_metric(after, "lmql_requests", "lmtp", label="transport") >= 1


def test_tokenize_and_detokenize_as_vllm(tiny: Server, guarded: Server) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(bundled_tiny())
    ids = reference(PROMPT, add_special_tokens=False)["input_ids"]
    assert tokenize(tiny, PROMPT, bos=False) == ids
    assert tokenize(tiny, PROMPT) == [reference.bos_token_id, *ids]  # the BOS first, as LMTP's text mode
    status, answer = post(tiny, "/detokenize", {"model": "lmql-tiny", "tokens": tokenize(tiny, PROMPT, bos=False)})
    assert status == 200 and answer == {"prompt": PROMPT}
    status, answer = post(guarded, "/tokenize", {"model": guarded.model, "messages": MESSAGES},  # type: ignore[attr-defined]
                          {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and answer["tokens"] == template_ids(guarded.model)  # type: ignore[attr-defined]
    assert answer["max_model_len"] == 512 and answer["count"] == len(answer["tokens"])


def test_streamed_choices_with_echo_equal_the_whole_answer(tiny: Server) -> None:
    options: dict[str, Any] = dict(model="lmql-tiny", prompt=[PROMPT, "Hello"], max_tokens=6, temperature=0, n=2,
                                   echo=True, logprobs=1)
    whole = client(tiny).completions.create(**options)
    texts: dict[int, str] = {}
    logprobs: dict[int, list[Any]] = {}
    for chunk in client(tiny).completions.create(**options, stream=True):
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        logprobs.setdefault(choice.index, []).extend(choice.logprobs.token_logprobs)
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    for i, choice in enumerate(whole.choices):  # the batches differ: float32 sums in another order
        assert logprobs[i][0] is None is choice.logprobs.token_logprobs[0]
        assert logprobs[i][1:] == pytest.approx(choice.logprobs.token_logprobs[1:], abs=1e-4)
    assert whole.choices[0].text.startswith(PROMPT) and whole.choices[2].text.startswith("Hello")
