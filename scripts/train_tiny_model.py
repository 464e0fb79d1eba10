"""Train the bundled ``lmql-tiny`` model: a small Llama with a byte-level BPE tokenizer.

    apt-get install fortunes fortunes-min      # the corpus (BSD licence), /usr/share/games/fortunes
    python scripts/train_tiny_model.py         # defaults reproduce the shipped model

Everything is seeded and runs on CPU. The output is an HF folder that ``from_pretrained`` and
``tokenizers.Tokenizer.from_file`` load offline (plugins/hf/src/lmql_hf/models/lmql-tiny), plus a
README.md recording the corpus, the shape, the losses and the command.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast as HFTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "plugins" / "hf" / "src" / "lmql_hf" / "models" / "lmql-tiny"
SKIP = "ascii-art,ethnic"  # pictures, not prose; ethnic jokes, left out to keep samples inoffensive
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
MAX_POSITIONS = 512
# Model shape and training: the defaults reproduce the shipped model.
DEFAULTS = {"vocab-size": 2048, "hidden": 192, "intermediate": 384, "layers": 4, "heads": 6, "steps": 2400,
            "batch": 16, "seq-len": 256, "lr": 3e-3, "warmup": 100, "log-every": 50, "eval-every": 200,
            "threads": 2, "seed": 0}
CHECKS = [("The cat sat on the", " floor", " xqzv"), ("The cat sat on the", " mat", " xqzv"),
          ("I love", " you", " qjxz"), ("It is a truth universally", " known", " zzkq")]


def read_corpus(folder: Path, skip: set[str]) -> list[str]:
    """Every fortune of every file in ``folder`` (one string each), without the ``%`` lines."""
    texts = []
    for path in sorted(folder.iterdir()):
        if path.suffix or path.name in skip or path.is_symlink() or not path.is_file():
            continue  # .dat indexes, .u8 links and sub-folders such as off/
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            entry = entry.strip("%\n ")
            if len(entry) > 20:
                texts.append(entry)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE: all 256 bytes are in the vocabulary, so any UTF-8 text round-trips."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one stream of ids, each as ``<s> text </s>``."""
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend([bos, *encoding.ids, eos])
    return torch.tensor(ids, dtype=torch.long)


def make_config(args: argparse.Namespace, tokenizer: Tokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=args.hidden,
                       intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.heads,
                       max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       pad_token_id=tokenizer.token_to_id(PAD), bos_token_id=tokenizer.token_to_id(BOS),
                       eos_token_id=tokenizer.token_to_id(EOS))


def random_batch(data: torch.Tensor, seq_len: int, batch: int, rng: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq_len, (batch,), generator=rng).tolist()
    return torch.stack([data[s : s + seq_len] for s in starts])


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: torch.Tensor, seq_len: int) -> float:
    """Mean loss over the whole held-out stream, cut into windows of ``seq_len``."""
    model.eval()
    chunks = data[: len(data) // seq_len * seq_len].view(-1, seq_len)
    losses = [model(input_ids=c, labels=c).loss.item() for c in chunks.split(32)]
    model.train()
    return sum(losses) / len(losses)


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace, model: LlamaForCausalLM, train_data: torch.Tensor,
          valid_data: torch.Tensor) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    rng = torch.Generator().manual_seed(args.seed)
    started, recent = time.monotonic(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        x = random_batch(train_data, args.seq_len, args.batch, rng)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-args.log_every:]
        if (step + 1) % args.log_every == 0:
            line = f"step {step + 1}/{args.steps} loss {sum(recent) / len(recent):.3f}"
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                line += f" held-out {evaluate(model, valid_data, args.seq_len):.3f}"
            print(f"{line} lr {learning_rate(args, step):.2e} {time.monotonic() - started:.0f}s", flush=True)
    model.eval()
    minutes = (time.monotonic() - started) / 60
    return {"minutes": minutes, "last_batches_loss": sum(recent) / len(recent),
            "train_loss": evaluate(model, train_data[: len(valid_data)], args.seq_len),
            "heldout_loss": evaluate(model, valid_data, args.seq_len)}


def save(model: LlamaForCausalLM, tokenizer: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # config.json, generation_config.json, model.safetensors (float32)
    fast = HFTokenizer(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                       model_max_length=MAX_POSITIONS, clean_up_tokenization_spaces=False)
    fast.save_pretrained(out)  # tokenizer.json, tokenizer_config.json
    config_path = out / "tokenizer_config.json"  # a class name that transformers 4.x knows too
    config = json.loads(config_path.read_text()) | {"tokenizer_class": "PreTrainedTokenizerFast"}
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def encode(tok: HFTokenizer, text: str, bos: bool = False) -> list[int]:
    return [tok.bos_token_id] * bos + tok.encode(text, add_special_tokens=False)


def log_prob(model: LlamaForCausalLM, tok: HFTokenizer, prompt: str, value: str) -> float:
    """Sum of the log-probabilities of ``value``'s tokens after ``<s> prompt``."""
    p, v = encode(tok, prompt, bos=True), encode(tok, value)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([p + v])).logits[0].float(), -1)
    return sum(logprobs[len(p) - 1 + i, t].item() for i, t in enumerate(v))


def check(model: LlamaForCausalLM, out: Path) -> dict:
    """Reload the folder, compare logits with the trained model, score real vs random text, sample."""
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    text = "Héllo, wörld! \t日本語 🙂\n  -- Mark Twain"
    assert Tokenizer.from_file(str(out / "tokenizer.json")).decode(encode(tok, text)) == text
    ids = torch.tensor([encode(tok, "A penny saved is a penny earned.", bos=True)])
    with torch.no_grad():
        same = torch.equal(model(ids).logits, loaded(ids).logits)
    print(f"reloaded from {out}: logits identical: {same}; UTF-8 round trip ok")
    assert same, "reloaded model gives different logits"
    scores = []
    for prompt, good, bad in CHECKS:
        g, b = log_prob(loaded, tok, prompt, good), log_prob(loaded, tok, prompt, bad)
        scores.append((prompt, good, g, bad, b))
        print(f"score {prompt!r}: {good!r} {g:.2f}  vs  {bad!r} {b:.2f}  ({'ok' if g > b + 5 else 'WEAK'})")
    samples = []
    for prompt in ["The cat sat on the", "Once upon a time", "A computer"]:
        ids = torch.tensor([encode(tok, prompt, bos=True)])
        generated = loaded.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        samples.append(tok.decode(generated[0, 1:], skip_special_tokens=True))
        print(f"greedy: {samples[-1]!r}")
    return {"scores": scores, "samples": samples}


def corpus_versions() -> str:
    try:
        return subprocess.run(["dpkg-query", "-W", "fortunes", "fortunes-min"], capture_output=True,
                              text=True, check=True).stdout.strip().replace("\t", " ").replace("\n", ", ")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (dpkg-query failed)"


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return f"a {len(names) or '?'}-core {names[0] if names else 'unknown'} CPU, no GPU"


def changed_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command-line options that differ from the defaults (``--out`` aside), for the README."""
    changed = [(k, v) for k, v in vars(args).items() if k != "out" and v != parser.get_default(k)]
    return "".join(f" --{k.replace('_', '-')} {v}" for k, v in changed)


def write_readme(args: argparse.Namespace, out: Path, facts: dict) -> None:
    c, r = facts["config"], facts["results"]
    scores = "\n".join(f"| `{p}` | `{g!r}` {gs:.2f} | `{b!r}` {bs:.2f} |"
                       for p, g, gs, b, bs in facts["checks"]["scores"])
    samples = "\n".join(f"    {s!r}" for s in facts["checks"]["samples"])
    (out / "README.md").write_text(f"""# lmql-tiny

A tiny Llama-architecture causal LM with a byte-level BPE tokenizer, trained from scratch on CPU by
`scripts/train_tiny_model.py`. It writes locally plausible English, enough for tests and demos of
constrained decoding and scoring; it knows nothing and follows no instructions.

## Corpus
Debian packages {facts['versions']}: the fortune cookie files in `{args.corpus}`
(all files except {args.skip}; no `off/` offensive files), split on the `%` lines:
{facts['docs']} fortunes, {facts['chars']:,} characters. Licence: BSD (4.4BSD, Regents of the University
of California; see `/usr/share/doc/fortunes/copyright`). {facts['heldout_docs']} fortunes (2%, seeded shuffle)
are held out for validation; the tokenizer is trained on the rest.

## Tokenizer
Byte-level BPE (`tokenizers`: ByteLevel pre-tokenizer and decoder, all 256 bytes in the vocabulary,
so any UTF-8 text round-trips), vocab size {c.vocab_size}; special tokens `<pad>`={c.pad_token_id},
`<s>`={c.bos_token_id} (BOS), `</s>`={c.eos_token_id} (EOS). No BOS is added by `encode`; each training
document was `<s> text </s>`. {facts['train_tokens']:,} training and {facts['valid_tokens']:,} held-out
tokens.

## Model
`LlamaForCausalLM`: hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads
(head dim {c.hidden_size // c.num_attention_heads}, no GQA), MLP {c.intermediate_size}, RMSNorm eps
{c.rms_norm_eps}, default RoPE, no biases, tied input/output embeddings, max_position_embeddings
{c.max_position_embeddings}; {facts['params']:,} parameters, stored in float32 (`model.safetensors`).

## Training
{args.steps} steps of AdamW (betas 0.9/0.95, weight decay 0.1, grad clip 1.0), batch {args.batch} x
{args.seq_len} tokens (random windows of the token stream), peak lr {args.lr} with {args.warmup} warm-up
steps and cosine decay to {args.lr / 10:g}; seed {args.seed}, {args.threads} threads.
Wall time {r['minutes']:.1f} min on {facts['machine']}.

| loss (nats/token) | value |
|---|---|
| train (mean of last {args.log_every} batches) | {r['last_batches_loss']:.3f} |
| train (first {facts['valid_tokens']:,} training tokens, eval mode) | {r['train_loss']:.3f} |
| held-out | {r['heldout_loss']:.3f} |

Sum log-probability of a continuation (reloaded model):

| prompt | real | random |
|---|---|---|
{scores}

Greedy samples:

{samples}

## Reproduce
    apt-get install fortunes fortunes-min
    python scripts/train_tiny_model.py{facts['options']}

torch {torch.__version__}; results can differ in the last digits with another torch build or thread count.
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="/usr/share/games/fortunes", help="folder of fortune files")
    parser.add_argument("--skip", default=SKIP, help="comma-separated corpus files to leave out")
    parser.add_argument("--out", default=str(OUT))
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    args = parser.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    texts = read_corpus(Path(args.corpus), set(args.skip.split(",")))
    random.shuffle(texts)
    held = max(1, len(texts) // 50)
    tokenizer = train_tokenizer(texts[held:], args.vocab_size)
    train_data, valid_data = token_stream(tokenizer, texts[held:]), token_stream(tokenizer, texts[:held])
    print(f"corpus: {len(texts)} fortunes; {len(train_data)} training / {len(valid_data)} held-out tokens")
    model = LlamaForCausalLM(make_config(args, tokenizer))
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters; {args.steps} steps of {args.batch}x{args.seq_len} tokens",
          flush=True)
    results = train(args, model, train_data, valid_data)
    print(f"trained in {results['minutes']:.1f} min: train loss {results['train_loss']:.3f} "
          f"(last batches {results['last_batches_loss']:.3f}), held-out loss {results['heldout_loss']:.3f}")
    out = Path(args.out)
    save(model, tokenizer, out)
    facts = {"config": model.config, "results": results, "checks": check(model, out), "params": params,
             "versions": corpus_versions(), "docs": len(texts), "chars": sum(map(len, texts)),
             "heldout_docs": held, "train_tokens": len(train_data), "valid_tokens": len(valid_data),
             "machine": machine(), "options": changed_options(parser, args)}
    write_readme(args, out, facts)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
