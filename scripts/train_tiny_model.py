"""Train the bundled ``lmql-tiny`` model: a small Llama with a byte-level BPE tokenizer.

    python scripts/train_tiny_model.py [--corpus /usr/share/games/fortunes] [--minutes 20]

The corpus is Debian's fortune cookie collection (``apt-get install fortunes fortunes-min``,
BSD licence). Everything is seeded; the output is an HF folder that ``from_pretrained`` and
``tokenizers`` load offline, written to plugins/hf/src/lmql_hf/models/lmql-tiny.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "plugins" / "hf" / "src" / "lmql_hf" / "models" / "lmql-tiny"
SKIP = {"art", "ascii-art"}  # pictures, not prose
SPECIAL = ["<pad>", "<s>", "</s>"]


def read_corpus(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.iterdir()):
        if path.suffix or path.name in SKIP or not path.is_file():
            continue  # .dat indexes and .u8 links
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            entry = entry.strip("%\n ")
            if len(entry) > 20:
                texts.append(entry)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend([bos, *encoding.ids, eos])
    return torch.tensor(ids, dtype=torch.long)


def batches(data: torch.Tensor, seq_len: int, batch: int, rng: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=rng)
    return torch.stack([data[s : s + seq_len] for s in starts])


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: torch.Tensor, seq_len: int) -> float:
    model.eval()
    chunks = data[: (len(data) // seq_len) * seq_len].view(-1, seq_len)[:64]
    loss = model(input_ids=chunks, labels=chunks).loss.item()
    model.train()
    return loss


def make_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=192, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)


def train(args: argparse.Namespace) -> None:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    texts = read_corpus(Path(args.corpus))
    random.shuffle(texts)
    held = max(1, len(texts) // 50)
    tokenizer = train_tokenizer(texts[held:], args.vocab_size)
    train_data, valid_data = token_stream(tokenizer, texts[held:]), token_stream(tokenizer, texts[:held])
    print(f"corpus: {len(texts)} fortunes, {len(train_data)} training / {len(valid_data)} held-out tokens")
    model = LlamaForCausalLM(make_config(tokenizer.get_vocab_size()))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    rng = torch.Generator().manual_seed(args.seed)
    started, step, loss = time.monotonic(), 0, float("nan")
    while step < args.steps:
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = batches(train_data, args.seq_len, args.batch, rng)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} lr {lr:.2e} "
                  f"{time.monotonic() - started:.0f}s", flush=True)
    minutes = (time.monotonic() - started) / 60
    valid = evaluate(model, valid_data, args.seq_len)
    print(f"trained {step} steps in {minutes:.1f} min; train loss {loss.item():.3f}, held-out loss {valid:.3f}")
    save(model, tokenizer, Path(args.out))
    report(Path(args.out), {"steps": step, "minutes": round(minutes, 1), "train_loss": round(loss.item(), 3),
                            "heldout_loss": round(valid, 3), "fortunes": len(texts),
                            "train_tokens": len(train_data), "heldout_tokens": len(valid_data)})


def save(model: LlamaForCausalLM, tokenizer: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "model_max_length": 512, "add_bos_token": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def report(out: Path, figures: dict) -> None:
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)

    def score(prompt: str, value: str) -> float:
        p, v = [tok.bos_token_id, *tok.encode(prompt)], tok.encode(value)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([p + v])).logits[0], -1)
        return sum(logprobs[len(p) - 1 + i, t].item() for i, t in enumerate(v))

    for prompt, good, bad in [("The cat sat on the", " floor", " xqzvk"), ("I love", " you", " qqjx")]:
        print(f"score {prompt!r}: {good!r} {score(prompt, good):.2f} vs {bad!r} {score(prompt, bad):.2f}")
    ids = torch.tensor([[tok.bos_token_id, *tok.encode("Once upon a time")]])
    sample = model.generate(ids, max_new_tokens=40, do_sample=False)[0]
    print("greedy sample:", repr(tok.decode(sample[1:])))
    (out / "training.json").write_text(json.dumps(figures, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="/usr/share/games/fortunes")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
