"""The benchmarks' models: built from their configs with random weights into the temporary
folder (nothing downloads), each saved once and reused while its folder exists.

- ``gpt2-medium``: GPT-2's 350M shape, float16.
- ``llama-1b``: a Llama-shaped 1.2B model (GQA 32/8 heads, RoPE, SwiGLU, 128,256-token
  vocabulary), bfloat16.
- ``qwen3-0.6b``: Qwen3-0.6B's shape (151,936-token vocabulary, 28 layers, head_dim 128, tied
  embeddings), bfloat16.
- ``gpt2-micro``: a GPT-2 of one layer of width 8 and 2,048 tokens, float32: a CPU stand-in whose
  step costs little, so that the server's per-token host work is what a CPU run measures (issue
  29's OpenAI/LMTP point).
- ``gpt2-micro-50k``: gpt2-micro with GPT-2's 50,257-token vocabulary: the CPU stand-in of
  ``constraints_gpu.py --cpu``, whose masks cover a real vocabulary.
- ``lmql-tiny``: the bundled tiny model (the CPU smoke runs), float32.

The GPT-2 shapes come with a byte-level BPE of their vocabulary trained on this machine's Python
sources (``local_bpe.py``), so that their tokens decode to text as a real model's do (a folder with
a config alone gets a tokenizer that decodes most tokens to nothing, which flatters every path that
turns tokens into text). The Llama and Qwen3 shapes keep their configs' tokenizers.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_bpe import python_sources_bpe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "compat"))
from build_model import legacy_merges  # noqa: E402  (tests/compat)

ROOT = Path(tempfile.gettempdir())


@dataclass(frozen=True)
class BenchModel:
    name: str
    folder: Path
    dtype: str  # what the servers load it as

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.folder / "config.json").read_text())
        return config

    def eos_token_id(self) -> int | None:
        eos = self.config().get("eos_token_id")
        return eos[0] if isinstance(eos, list) else eos


def _configs() -> dict[str, Any]:
    from transformers import GPT2Config, LlamaConfig, Qwen3Config

    return {
        "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257),
        "gpt2-micro": GPT2Config(n_embd=8, n_layer=1, n_head=1, n_positions=1024, vocab_size=2048,
                                 bos_token_id=2047, eos_token_id=2047),
        "gpt2-micro-50k": GPT2Config(n_embd=8, n_layer=1, n_head=1, n_positions=1024, vocab_size=50257),
        "llama-1b": LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001,
                                tie_word_embeddings=True),
        "qwen3-0.6b": Qwen3Config(vocab_size=151936, num_hidden_layers=28, hidden_size=1024,
                                  num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                  intermediate_size=3072, max_position_embeddings=40960,
                                  tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    }


DTYPES = {"gpt2-medium": "float16", "gpt2-micro": "float32", "gpt2-micro-50k": "float32",
          "llama-1b": "bfloat16", "qwen3-0.6b": "bfloat16"}
FOLDERS = {"gpt2-medium": ROOT / "lmql-bench-gpt2-medium", "gpt2-micro": ROOT / "lmql-bench-gpt2-micro",
           "gpt2-micro-50k": ROOT / "lmql-bench-gpt2-micro-50k",
           "llama-1b": ROOT / "lmql-bench-llama-1b",
           "qwen3-0.6b": ROOT / "lmql-bench-qwen3-0.6b"}


def bench_model(name: str) -> BenchModel:
    """The model called ``name``, built first if its folder has none yet."""
    if name == "lmql-tiny":
        from lmql_hf.bundled import bundled_path

        return BenchModel(name, Path(bundled_path("lmql-tiny")), "float32")
    model = BenchModel(name, FOLDERS[name], DTYPES[name])
    if not (model.folder / "config.json").exists():
        _build(name, model)
    if name.startswith("gpt2") and not (model.folder / "tokenizer.json").exists():
        _add_tokenizer(model.folder, model.config()["vocab_size"])
    return model


def _add_tokenizer(folder: Path, vocab: int) -> None:
    """The trained BPE, EOS last as GPT-2's, its merges in the form LMQL 0.7.3's older
    ``tokenizers`` reads too."""
    shutil.copyfile(python_sources_bpe(vocab), folder / "tokenizer.json")
    legacy_merges(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "tokenizer_class": "GPT2TokenizerFast"}))


def _build(name: str, model: BenchModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1B weights: seconds on a GPU
    with torch.device(device):
        module = AutoModelForCausalLM.from_config(_configs()[name], dtype=getattr(torch, model.dtype))
    module.save_pretrained(model.folder)
    del module
    if device == "cuda":
        torch.cuda.empty_cache()
