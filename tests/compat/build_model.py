"""Build the model folder both servers serve, with no downloads.

A copy of the bundled ``lmql-tiny`` when it is installed; otherwise (or with ``--random``) a
seeded random ``LlamaForCausalLM`` with a byte-level BPE tokenizer trained here. Either way the
folder loads in transformers 4.3x (LMQL 0.7.3's side) as well as in ours: ``tokenizer.json``
keeps BPE merges in the older ``"a b"`` string form, which every ``tokenizers`` release reads.

    python tests/compat/build_model.py DEST [--random]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2 as in lmql-tiny
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                    "pad_token": "<pad>", "model_max_length": 512, "add_bos_token": False}
CORPUS = [
    "Once upon a time there was a little cat who liked to sit on the mat.",
    "The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.",
    "Q: What is the capital of France? A: Paris. Q: What is two plus two? A: 4.",
    "She said hello to the world, and the world said hello back. Yes, no, maybe.",
]


def bundled() -> Path | None:
    try:
        from lmql_hf.bundled import bundled_path
    except ImportError:
        return None
    return bundled_path("lmql-tiny")


def legacy_merges(folder: Path) -> None:
    """Write BPE merges as ``"a b"`` strings (tokenizers >= 0.20 writes pairs, older ones can't read those)."""
    path = folder / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    model = doc["model"]
    if model.get("type") == "BPE":
        merges = []
        for merge in model.get("merges", []):
            if isinstance(merge, list):
                if any(" " in part for part in merge):
                    raise SystemExit("a merge holds a space: the legacy form cannot carry it")
                merge = " ".join(merge)
            merges.append(merge)
        model["merges"] = merges
        model.pop("ignore_merges", None)  # unknown to tokenizers < 0.19
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def copy_bundled(source: Path, dest: Path) -> None:
    for f in source.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)


def build_random(dest: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    tokenizer.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False, initializer_range=0.5)  # wide logits: no near-ties
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(dest, safe_serialization=True)


def build(dest: Path, random: bool = False) -> str:
    """Make ``dest`` a model folder (replacing what was there); returns which kind it is."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    source = None if random else bundled()
    if source is not None:
        copy_bundled(source, dest)
        kind = f"copy of {source}"
    else:
        build_random(dest)
        kind = "seeded random LlamaForCausalLM"
    legacy_merges(dest)
    return kind


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--random", action="store_true", help="a random model even if lmql-tiny is there")
    args = parser.parse_args(argv)
    print(f"{args.dest}: {build(args.dest, args.random)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
