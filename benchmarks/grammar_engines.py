"""Constraint engines on the CPU: llguidance against xgrammar on issue 31's workloads.

    python benchmarks/grammar_engines.py [--big-tokenizer PATH/tokenizer.json] [--batch 64]

For each tokenizer (the bundled lmql-tiny's, 2k tokens; and a large one where given: nothing is
downloaded, ``--build-big PATH`` trains a 151k-token byte-level BPE locally with ``tokenizers``)
and each workload (a choice among 20 strings, a date regex, an INT, a JSON schema, a
4-variable template grammar) it prints:
- compile: building a matcher from the grammar text (llguidance: ``LLMatcher``; xgrammar:
  ``GrammarCompiler.compile_*`` with its cache off, then a ``GrammarMatcher``), median ms;
- mask: computing one token mask along a valid output, then consuming its token, µs a token;
- batch: one step's masks for ``--batch`` matchers through each library's parallel batch call, ms.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local_bpe import train_bpe

GREEK = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
         "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon"]
CHOICES = [f"option {name}" for name in GREEK]
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
    "city": {"type": "string", "enum": ["Paris", "Zurich", "Tokyo"]},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
    "required": ["name", "age", "city", "tags"], "additionalProperties": False}
TEMPLATE_LARK = r"""
start: "Name: " NAME "\nAge: " AGE "\nCity: " CITY "\nBorn: " DATE "\n"
NAME: /[A-Z][a-z]{1,15}( [A-Z][a-z]{1,15})?/
AGE: /[0-9]{1,3}/
CITY: "Paris" | "Zurich" | "Tokyo"
DATE: /[0-9]{4}-[0-9]{2}-[0-9]{2}/
"""
TEMPLATE_EBNF = r"""
root ::= "Name: " name "\nAge: " age "\nCity: " city "\nBorn: " date "\n"
name ::= [A-Z] [a-z]{1,15} (" " [A-Z] [a-z]{1,15})?
age ::= [0-9]{1,3}
city ::= "Paris" | "Zurich" | "Tokyo"
date ::= [0-9]{4} "-" [0-9]{2} "-" [0-9]{2}
"""

# (name, kind, grammar source, a valid output)
WORKLOADS: list[tuple[str, str, Any, str]] = [
    ("choice of 20", "regex", "(" + "|".join(CHOICES) + ")", "option sigma"),
    ("date regex", "regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}", "2024-05-17"),
    ("INT", "regex", r"[0-9]+", "1234567"),
    ("JSON schema", "json", SCHEMA, json.dumps({"name": "Ada Lovelace", "age": 36, "city": "Zurich",
                                                  "tags": ["math", "poetry"]})),
    ("4-variable template", "template", (TEMPLATE_LARK, TEMPLATE_EBNF),
     "Name: Ada Lovelace\nAge: 36\nCity: Zurich\nBorn: 1815-12-10\n"),
]


def median_ms(run: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class Llguidance:
    name = "llguidance"

    def __init__(self, hf_tokenizer: Any) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self.ll, self.np = llguidance, llguidance.numpy
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)
        self.executor = llguidance.LLExecutor()
        self.vocab = self.tokenizer.vocab_size

    def grammar(self, kind: str, source: Any) -> str:
        m = self.ll.LLMatcher
        if kind == "regex":
            return m.grammar_from_regex(source)
        if kind == "json":
            return m.grammar_from_json_schema(source)
        return m.grammar_from_lark(source[0])

    def compile(self, grammar: str) -> Any:
        matcher = self.ll.LLMatcher(self.tokenizer, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def walk(self, matcher: Any, tokens: list[int]) -> int:
        """Mask then consume each token; returns how many tokens the grammar accepted."""
        mask = self.np.allocate_token_bitmask(1, self.vocab)
        for i, token in enumerate(tokens):
            self.np.fill_next_token_bitmask(matcher, mask)
            if not matcher.consume_token(token):
                return i
        return len(tokens)

    def batch_step(self, matchers: list[Any], mask: Any) -> None:
        self.np.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], mask)

    def allocate(self, n: int) -> Any:
        return self.np.allocate_token_bitmask(n, self.vocab)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, hf_tokenizer: Any) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=len(hf_tokenizer))
        self.batcher = xgrammar.BatchGrammarMatcher()
        self.vocab = len(hf_tokenizer)

    def grammar(self, kind: str, source: Any) -> tuple[str, Any]:
        return kind, source

    def compile(self, grammar: tuple[str, Any]) -> Any:
        kind, source = grammar
        compiler = self.xgr.GrammarCompiler(self.info, cache_enabled=False)
        if kind == "regex":
            compiled = compiler.compile_regex(source)
        elif kind == "json":
            compiled = compiler.compile_json_schema(json.dumps(source))
        else:
            compiled = compiler.compile_grammar(source[1])
        return self.xgr.GrammarMatcher(compiled)

    def walk(self, matcher: Any, tokens: list[int]) -> int:
        mask = self.allocate(1)
        for i, token in enumerate(tokens):
            matcher.fill_next_token_bitmask(mask)
            if not matcher.accept_token(token):
                return i
        return len(tokens)

    def batch_step(self, matchers: list[Any], mask: Any) -> None:
        self.batcher.batch_fill_next_token_bitmask(matchers, mask)

    def allocate(self, n: int) -> Any:
        return self.xgr.allocate_token_bitmask(n, self.vocab)


def measure(engine: Any, hf_tokenizer: Any, batch: int) -> list[dict[str, Any]]:
    rows = []
    for name, kind, source, output in WORKLOADS:
        tokens = hf_tokenizer.encode(output, add_special_tokens=False)
        grammar = engine.grammar(kind, source)
        compile_ms = median_ms(lambda g=grammar: engine.compile(g), 5)
        accepted = engine.walk(engine.compile(grammar), tokens)
        if accepted != len(tokens):
            rows.append({"workload": name, "error": f"rejected token {accepted} of {len(tokens)}"})
            continue
        matchers = [engine.compile(grammar) for _ in range(8)]
        start = time.perf_counter()
        for m in matchers:
            engine.walk(m, tokens)
        mask_us = (time.perf_counter() - start) / (len(matchers) * len(tokens)) * 1e6
        many = [engine.compile(grammar) for _ in range(batch)]
        mask = engine.allocate(batch)
        batch_ms = median_ms(lambda m=many, b=mask: engine.batch_step(m, b), 20)
        rows.append({"workload": name, "tokens": len(tokens), "compile_ms": compile_ms,
                     "mask_us": mask_us, "batch_ms": batch_ms})
    return rows


def hf_tokenizer_from(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")


def build_big_tokenizer(path: Path, corpus_globs: list[str], vocab: int = 151_000) -> None:
    """A byte-level BPE of ``vocab`` tokens trained here on local text (source files)."""
    train_bpe(corpus_globs, vocab, min_frequency=2).save(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-tokenizer", type=Path, help="a tokenizer.json with a large vocabulary")
    parser.add_argument("--build-big", type=Path, help="train a 151k-token BPE here first (local text)")
    parser.add_argument("--corpus", nargs="*", default=["/usr/lib/python3*/**/*.py"])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    from lmql_hf.bundled import bundled_path

    tokenizers = [("lmql-tiny", Path(str(bundled_path("lmql-tiny"))) / "tokenizer.json")]
    if args.build_big:
        build_big_tokenizer(args.build_big, args.corpus)
        args.big_tokenizer = args.build_big
    if args.big_tokenizer:
        tokenizers.append(("big", args.big_tokenizer))
    print("| tokenizer | vocab | engine | workload | tokens | compile ms | mask µs/token "
          f"| batch of {args.batch} ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, path in tokenizers:
        hf = hf_tokenizer_from(path)
        for engine_type in (Llguidance, Xgrammar):
            engine = engine_type(hf)
            for row in measure(engine, hf, args.batch):
                if "error" in row:
                    print(f"| {label} | {len(hf)} | {engine.name} | {row['workload']} | {row['error']} |||")
                    continue
                print(f"| {label} | {len(hf)} | {engine.name} | {row['workload']} | {row['tokens']} "
                      f"| {row['compile_ms']:.2f} | {row['mask_us']:.1f} | {row['batch_ms']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
