"""HF Llama checkpoints for the llama.cpp tests: the bundled ``lmql-tiny`` when it is a
float32 ``LlamaForCausalLM``, otherwise a small seeded random one with a byte-level BPE
tokenizer trained here on generated text. Either way the result is an HF folder with
``config.json``, safetensors weights, ``tokenizer.json`` and ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "plugins" / "hf" / "src" / "lmql_hf" / "models" / "lmql-tiny"
EOS = "<|endoftext|>"

WORDS = ["the", "a", "one", "every", "some", "model", "token", "server", "client", "stream", "prompt", "query", "answer", "cat", "dog", "river", "mountain", "city", "light", "music", "number", "seven", "three", "large", "small", "quick", "slow", "red", "blue", "green", "runs", "jumps", "reads", "writes", "sees", "finds", "makes", "takes", "gives", "keeps", "under", "over", "near", "far", "and", "but", "so", "because", "while", "when", "if", "then"]


def bundled_llama() -> Path | None:
    """The bundled lmql-tiny folder when it is a float32 LlamaForCausalLM with a tokenizer.json."""
    config_path = BUNDLED / "config.json"
    if not config_path.is_file() or not (BUNDLED / "tokenizer.json").is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return BUNDLED if "LlamaForCausalLM" in config.get("architectures", []) and dtype == "float32" else None


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ":"]) +
                   (f" {rng.randint(0, 999)}" if rng.random() < 0.2 else ""))
    return out


def train_tokenizer(folder: Path, vocab_size: int = 300) -> int:
    """A byte-level BPE tokenizer.json; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": EOS, "eos_token": EOS, "model_max_length": 512,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return int(tok.get_vocab_size(with_added_tokens=True))


def build_random_llama(folder: Path, seed: int = 0) -> Path:
    """A seeded random float32 LlamaForCausalLM (GQA, untied head, padded vocabulary)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    n_tokens = train_tokenizer(folder)
    eos = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"][0]["id"]
    config = LlamaConfig(
        vocab_size=(n_tokens + 63) // 64 * 64, hidden_size=64, intermediate_size=160,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    model.save_pretrained(folder)
    return folder


def hf_llama_folder(tmp: Path) -> Path:
    return bundled_llama() or build_random_llama(tmp / "random-llama")
