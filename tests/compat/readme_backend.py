"""The README's "Writing a backend" example as a plugin, for tests and the compatibility run.

``with_plugin(site)`` installs it the way ``pip install`` of its project would (the module and
its distribution's entry point) and gives the environment of a process that has it. For clients
that need tokenizer files (LMQL 0.7.3's), ``write_byte_tokenizer`` writes a ``tokenizers`` folder
whose ids are the text's UTF-8 bytes, as the backend's own ``BytesTokenizer``. ``EXPECTED``: what
LMQL 0.7.3's client must get from it (``programs.py lmql-readme``), worked out by hand.
Only the standard library at module level (``tokenizers`` when a tokenizer is written).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = "mine:anything"
CONFIDENCE = 10.0  # the example's default logit of the next byte; the other 255 bytes have 0
_LOG_TOTAL = math.log(math.exp(CONFIDENCE) + 255)
EXPECTED = {
    "readme_generate": "cde",  # "ab", then each next byte, greedy
    "readme_score": {"token_scores": [[CONFIDENCE - _LOG_TOTAL], [0.0 - _LOG_TOTAL, CONFIDENCE - _LOG_TOTAL]],
                     "argmax": "c"},  # "c" and "xy" after "ab"
    "readme_query": {"prompt": "abcde", "variables": {"X": "cde"}},
}


def readme_backend() -> str:
    """The example's code, exactly as the README prints it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(# mine_backend\.py\n.*?)```", readme, re.S)
    assert match, "the README's backend example is missing"
    return match.group(1)


def with_plugin(site: Path, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Install the example into ``site``; the PYTHONPATH of a process that has it, over ``env``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "mine_backend.py").write_text(readme_backend(), encoding="utf-8")
    info = site / "mine_backend-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lmql]\nmine = mine_backend\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))}


def gpt2_byte_characters() -> list[str]:
    """The character GPT-2's byte-level tokenizers write for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    shown = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
    return [shown[b] for b in range(256)]


def write_byte_tokenizer(folder: Path) -> Path:
    """A tokenizer folder (tokenizer.json, tokenizer_config.json) whose token ids are bytes, and an
    end-of-text token 256 the backend never produces (LMQL 0.7.3's client wants an EOS)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE({char: b for b, char in enumerate(gpt2_byte_characters())}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder
