"""The tokenizer a llama.cpp server hands to clients when no tokenizer.json lies next to the GGUF
file: rebuilt from the file's vocabulary, it must tokenize as the tokenizer.json the file was
made from (a GGUF export round trip) and as llama.cpp itself does."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
pytest.importorskip("lmql_llamacpp")

import llama_cpp  # noqa: E402
from llama_cpp import _internals as internals  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from lmql_core.loading.tokenizer import JsonTokenizer  # noqa: E402
from lmql_llamacpp import export, gguf_vocab  # noqa: E402
from lmql_llamacpp.backend import LlamaCppBackend  # noqa: E402
from lmql_llamacpp.gguf_vocab import read_metadata, tokenizer_json_from_gguf  # noqa: E402
from tests.llamacpp_models import EOS, corpus, hf_llama_folder, train_tokenizer  # noqa: E402

pytestmark = pytest.mark.llamacpp

TEXTS = [
    "The quick model runs over the river.",
    "Hello, world! How's it going? I'd say: fine...",
    "  leading spaces, and   runs   of  spaces  ",
    "line one\nline two\n\n\nthree\r\nfour\ttab\t\tend\n",
    "naïve café 日本語 🙂",
    "émoji🙂🙂 mixed ÀÉÎ ß ø — «quotes» ‘x’",
    "numbers 12345 3.14159 and 1,000,000 or 2024-06-01",
    "WE'LL SEE, they've done it; it's 'quoted' \"double\" (parens) [brackets] {braces}",
    "code: def f(x):\n    return x**2  # comment",
    "", " ", "  ", "\n", "\n\n", "a", "▁literal ▁ marks",
]


def added_texts(tokenizer: Tokenizer) -> list[str]:
    """Texts around the tokenizer's added tokens."""
    added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
    return [f"{t}Hello {t} world{t}" for t in added] + ["".join(added) + " x"]


def assert_same_encodings(rebuilt: Tokenizer, original: Tokenizer, texts: list[str]) -> None:
    for text in texts:
        ids = original.encode(text).ids
        assert rebuilt.encode(text).ids == ids, text
        decoded = original.decode(ids, skip_special_tokens=False)
        assert rebuilt.decode(ids, skip_special_tokens=False) == decoded, text


@pytest.fixture(scope="module")
def llama_cpp_ids() -> Iterator[Any]:
    """``ids(path, text)``: how llama.cpp tokenizes ``text`` (special tokens parsed) with the
    vocabulary of the GGUF file ``path``."""
    llama_cpp.llama_backend_init()
    loaded: dict[Path, Any] = {}

    def ids(path: Path, text: str) -> list[int]:
        if path not in loaded:
            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            loaded[path] = internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        return list(loaded[path].tokenize(text.encode("utf-8"), add_bos=False, special=True))

    yield ids
    for model in loaded.values():
        model.close()


def vocab_only_gguf(path: Path, write_vocabulary: Any) -> Path:
    """A GGUF file with llama hyperparameters and a vocabulary but no tensors (llama.cpp loads
    such files with ``vocab_only``)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    write_vocabulary(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def exported_vocabulary(folder: Path, out: Path, vocab_size: int) -> Path:
    tokenizer = export.read_tokenizer(folder, vocab_size)
    return vocab_only_gguf(out, lambda w: export.add_vocabulary(w, folder, {}, tokenizer))


def rebuilt(path: Path) -> Tokenizer:
    content = tokenizer_json_from_gguf(path)
    assert content is not None
    return Tokenizer.from_str(content)


# --- the exported test model (the round trip the served model relies on) -----------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_llama_folder(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def gguf_path(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole model exported, alone in its folder (no tokenizer.json next to it)."""
    return export.export_hf_llama_to_gguf(hf_folder, tmp_path_factory.mktemp("gguf") / "model.gguf")


def test_exported_model_round_trips_its_tokenizer(gguf_path: Path, hf_folder: Path,
                                                  llama_cpp_ids: Any) -> None:
    assert not (gguf_path.parent / "tokenizer.json").exists()
    original = Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
    tokenizer = rebuilt(gguf_path)
    texts = TEXTS + added_texts(original) + corpus(50, seed=7)
    assert_same_encodings(tokenizer, original, texts)
    for text in texts:
        ids = tokenizer.encode(text).ids
        assert llama_cpp_ids(gguf_path, text) == ids, text
        if not any(t in text for t in ("<s>", "</s>", "<pad>", EOS)):
            assert tokenizer.decode(ids) == text
    assert (tokenizer.get_vocab(with_added_tokens=True) == original.get_vocab(with_added_tokens=True))
    assert {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()} == \
        {t.content: t.special for t in original.get_added_tokens_decoder().values()}
    assert JsonTokenizer(tokenizer, None, None).fingerprint() == \
        JsonTokenizer.from_file(hf_folder / "tokenizer.json").fingerprint()


def test_metadata_reader_agrees_with_the_gguf_package(gguf_path: Path) -> None:
    ours = read_metadata(gguf_path)
    reference = gguf.GGUFReader(str(gguf_path))
    assert set(ours) == {k for k in reference.fields if not k.startswith("GGUF.")}
    for key, field in reference.fields.items():
        if not key.startswith("GGUF."):
            assert ours[key] == field.contents(), key
    assert ours["tokenizer.ggml.pre"] == "gpt-2" and ours["tokenizer.ggml.add_bos_token"] is True


# --- the backend -------------------------------------------------------------------------------


def test_backend_serves_the_rebuilt_tokenizer_once(gguf_path: Path, hf_folder: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LlamaCppBackend(str(gguf_path), n_ctx=64, n_seq_max=1)
    try:
        content = backend.tokenizer_json()
        assert content == tokenizer_json_from_gguf(gguf_path)
        monkeypatch.setattr("lmql_llamacpp.backend.tokenizer_json_from_gguf", None)  # not called again
        assert backend.tokenizer_json() is content
        config = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))
        assert backend.bos_token_id == config["bos_token_id"]  # clients put it before prompts
    finally:
        backend.close()


def test_backend_serves_the_tokenizer_json_next_to_the_file(gguf_path: Path, hf_folder: Path,
                                                            tmp_path: Path) -> None:
    (tmp_path / "model.gguf").symlink_to(gguf_path)
    beside = (hf_folder / "tokenizer.json").read_text(encoding="utf-8").replace("\n", "\n ")
    (tmp_path / "tokenizer.json").write_text(beside, encoding="utf-8")  # same JSON, other text
    backend = LlamaCppBackend(str(tmp_path / "model.gguf"), n_ctx=64, n_seq_max=1)
    try:
        assert backend.tokenizer_json() == beside
    finally:
        backend.close()


# --- byte-level BPE vocabularies ---------------------------------------------------------------


def test_padding_and_added_tokens_keep_their_ids(tmp_path: Path, llama_cpp_ids: Any) -> None:
    n = train_tokenizer(tmp_path)
    original = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    original.add_tokens(["<tool>"])  # an added token that is not special
    original.add_special_tokens(["<|im_end|>"])
    original.save(str(tmp_path / "tokenizer.json"))
    path = exported_vocabulary(tmp_path, tmp_path / "vocab.gguf", vocab_size=(n + 2 + 63) // 64 * 64)
    assert read_metadata(path)["tokenizer.ggml.tokens"][-1].startswith("[PAD")
    tokenizer = rebuilt(path)
    assert tokenizer.get_vocab(with_added_tokens=True) == original.get_vocab(with_added_tokens=True)
    assert {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()} == \
        {EOS: True, "<tool>": False, "<|im_end|>": True}
    texts = TEXTS + added_texts(original) + ["a<tool>b <tool> c"]
    assert_same_encodings(tokenizer, original, texts)
    for text in texts:
        assert llama_cpp_ids(path, text) == original.encode(text).ids, text


@pytest.mark.parametrize(("regex", "ignore_merges", "pre"), [
    (gguf_vocab.LLAMA3_SPLIT, True, "llama-bpe"),
    (gguf_vocab.QWEN2_SPLIT, False, "qwen2"),
])
def test_other_splits_are_named_and_rebuilt(tmp_path: Path, llama_cpp_ids: Any, regex: str,
                                            ignore_merges: bool, pre: str) -> None:
    original = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    original.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    original.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    original.train_from_iterator(corpus() + TEXTS * 3, trainer)
    original.save(str(tmp_path / "tokenizer.json"))
    path = exported_vocabulary(tmp_path, tmp_path / "vocab.gguf", original.get_vocab_size())
    assert read_metadata(path)["tokenizer.ggml.pre"] == pre
    texts = TEXTS + added_texts(original) + corpus(30, seed=5)
    assert_same_encodings(rebuilt(path), original, texts)
    for text in texts:
        assert llama_cpp_ids(path, text) == original.encode(text).ids, text


def test_exporter_refuses_tokenizers_a_gguf_vocabulary_cannot_express(tmp_path: Path) -> None:
    train_tokenizer(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(export.ExportError, match="cannot be written as a GGUF vocabulary"):
        export.read_tokenizer(tmp_path, 512)


# --- SentencePiece ("llama") vocabularies ------------------------------------------------------


def sentencepiece_vocabulary(seed: int = 0) -> tuple[list[str], list[int], list[float]]:
    """Tokens, types and scores laid out as llama.cpp's converter writes a SentencePiece BPE
    model: unknown, BOS, EOS, the 256 byte tokens, a user-defined token, then the pieces
    (``▁`` for spaces), best first (score = -rank)."""
    rng = random.Random(seed)
    lines = [line if rng.random() < 0.7 else line.replace(" ", "  " * rng.randint(1, 3)) + "\n\n"
             for line in corpus(600, seed=seed)]
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=500, show_progress=False))
    pieces = [p for p, _ in sorted(trained.get_vocab().items(), key=lambda item: item[1])]
    ranked = [p for p in pieces if len(p) > 1] + [p for p in pieces if len(p) == 1]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "<tool>", *ranked]
    types = [2, 3, 3] + [6] * 256 + [4] + [1] * len(ranked)
    scores = [0.0] * 260 + [-float(rank) for rank in range(len(ranked))]
    return tokens, types, scores


@pytest.mark.parametrize("space_prefix", [True, False])
def test_sentencepiece_vocabulary_tokenizes_as_llama_cpp(tmp_path: Path, llama_cpp_ids: Any,
                                                         space_prefix: bool) -> None:
    tokens, types, scores = sentencepiece_vocabulary()

    def write(writer: Any) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_scores(scores)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_space_prefix(space_prefix)

    path = vocab_only_gguf(tmp_path / "spm.gguf", write)
    tokenizer = rebuilt(path)
    rng = random.Random(1)
    lines = corpus(100, seed=3)
    texts = TEXTS + added_texts(tokenizer) + ["a<tool>b", "<s>x</s> y"]
    texts += [rng.choice(lines) + "  " + rng.choice(lines) for _ in range(100)]
    texts += ["".join(rng.choice("ab ▁\nthe") for _ in range(rng.randint(1, 30))) for _ in range(200)]
    for text in texts:
        ids = tokenizer.encode(text).ids
        assert ids == llama_cpp_ids(path, text), text
        if "▁" not in text and "<" not in text and (space_prefix or not text.startswith(" ")):
            assert tokenizer.decode(ids) == text
    assert tokenizer.encode("é").ids[-2:] == [tokens.index("<0xC3>"), tokens.index("<0xA9>")]
    assert tokenizer.get_vocab_size(with_added_tokens=True) == len(tokens)


# --- what cannot be rebuilt --------------------------------------------------------------------


def test_unsupported_vocabularies_give_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def unknown_pre(writer: Any) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("starcoder")  # splits digits first: GPT-2's split would differ
        writer.add_token_list(["a", "b", "ab"])
        writer.add_token_merges(["a b"])

    def wordpiece(writer: Any) -> None:
        writer.add_tokenizer_model("bert")
        writer.add_token_list(["[UNK]", "a", "##b"])

    caplog.set_level(logging.WARNING, logger="lmql_llamacpp.gguf_vocab")
    assert tokenizer_json_from_gguf(vocab_only_gguf(tmp_path / "pre.gguf", unknown_pre)) is None
    assert "pre-tokenizer 'starcoder'" in caplog.text
    assert tokenizer_json_from_gguf(vocab_only_gguf(tmp_path / "bert.gguf", wordpiece)) is None
    assert "'bert' vocabularies are not supported" in caplog.text
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    assert tokenizer_json_from_gguf(tmp_path / "bad.gguf") is None
    assert tokenizer_json_from_gguf(tmp_path / "nowhere.gguf") is None
