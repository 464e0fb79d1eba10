"""Export a float32 Hugging Face ``LlamaForCausalLM`` folder to a GGUF file llama.cpp loads.

Usage: ``python -m lmql_llamacpp.export HF_FOLDER OUT.gguf``

Writes every weight as F32 (no quantization), the ``llama`` hyperparameters, and the folder's
byte-level BPE ``tokenizer.json`` as a ``gpt2`` vocabulary (llama.cpp needs a vocabulary to load
a model; lmql clients tokenize with the same ``tokenizer.json`` through HF ``tokenizers``). The
vocabulary is written so that it tokenizes exactly as the ``tokenizer.json`` does, in llama.cpp
and in the tokenizer ``lmql_llamacpp.gguf_vocab`` rebuilds from it (same ids, same special and
added tokens, the pre-tokenizer named by ``tokenizer.ggml.pre``); a ``tokenizer.json`` a GGUF
vocabulary cannot express is refused.

HF stores the rotary halves of each attention head as ``[x0..x(d/2-1), x(d/2)..x(d-1)]``,
llama.cpp interleaves them as pairs, so the Q and K projections are permuted per head (the
same ``permute`` as llama.cpp's ``convert_hf_to_gguf.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmql_llamacpp.gguf_vocab import (
    CONTROL,
    LLAMA3_SPLIT,
    NORMAL,
    PRE_TOKENIZERS,
    QWEN2_SPLIT,
    UNUSED,
    USER_DEFINED,
)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)

# HF parameter name (within ``model.layers.N.``) -> GGUF tensor name (within ``blk.N.``)
LAYER_TENSORS = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


class ExportError(ValueError):
    pass


def permute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half layout of Q/K rows -> llama.cpp's interleaved pairs, per head."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def gguf_tensor_name(hf_name: str) -> str | None:
    """The GGUF name of an HF parameter, or None for buffers llama.cpp does not need."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"]:
        target = LAYER_TENSORS.get(parts[3])
        if target:
            return f"blk.{int(parts[2])}.{target}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    raise ExportError(f"unexpected tensor '{hf_name}' for a LlamaForCausalLM checkpoint")


def read_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ExportError(f"{folder} holds {archs or 'an unknown architecture'}; "
                          f"this exporter handles {', '.join(SUPPORTED_ARCHITECTURES)}")
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ExportError(f"rope scaling '{rope_type}' is not supported by this exporter")
    return config


def rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}  # transformers 5.x moved it here
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def iter_weights(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) of every tensor in the folder's safetensors or PyTorch files."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield name, _float32(f, name)
        return
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise ExportError(f"no *.safetensors or pytorch_model*.bin weights in {folder}")
    import torch

    for file in bins:
        for name, tensor in torch.load(file, map_location="cpu", weights_only=True).items():
            yield name, tensor.float().numpy()


def _float32(handle: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(handle.get_tensor(name), dtype=np.float32)
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype
        raise ExportError(f"tensor '{name}' is not float32/float16; convert the checkpoint to "
                          "float32 first (model.float().save_pretrained(...))") from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def pre_tokenizer_name(data: dict[str, Any], path: Path) -> str:
    """The ``tokenizer.ggml.pre`` that splits text as this ``tokenizer.json`` does, in llama.cpp
    and in ``gguf_vocab``; ExportError for a pipeline a GGUF vocabulary cannot express."""
    model, pre = data["model"], data.get("pre_tokenizer") or {}
    name = None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        name = "gpt-2"
    elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 2:
        split, byte_level = pre["pretokenizers"]
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated"
                and not split.get("invert") and byte_level.get("type") == "ByteLevel"
                and not byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space")):
            regex = (split.get("pattern") or {}).get("Regex")
            name = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}.get(str(regex))
    plain = data.get("normalizer") is None and not any(
        model.get(key) for key in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"))
    if name is None or not plain or bool(model.get("ignore_merges")) != PRE_TOKENIZERS[name][1]:
        raise ExportError(f"{path} cannot be written as a GGUF vocabulary: only byte-level BPE without "
                          "a normalizer that splits text like GPT-2, Llama 3 or Qwen 2 is supported")
    return name


def read_tokenizer(folder: Path, vocab_size: int) -> dict[str, Any]:
    """Tokens, types, merges and pre-tokenizer of a byte-level BPE ``tokenizer.json``, padded to
    ``vocab_size`` (with unused ``[PAD<id>]`` tokens, as llama.cpp's converter pads)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"no tokenizer.json in {folder} (llama.cpp needs a vocabulary)")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"{path} is a {model.get('type')} tokenizer; only byte-level BPE is supported")
    pre = pre_tokenizer_name(data, path)
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    vocab.update({text: t["id"] for text, t in added.items()})
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(vocab.values())} but the model only "
                          f"{vocab_size} embeddings")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for text, index in vocab.items():
        tokens[index] = text
        if text in added:  # llama.cpp matches both kinds whole in the text, as HF does
            types[index] = CONTROL if added[text].get("special") else USER_DEFINED
        else:
            types[index] = NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "types": types, "merges": merges, "ids": vocab, "pre": pre}


def special_ids(folder: Path, config: dict[str, Any], ids: dict[str, int]) -> dict[str, int]:
    """BOS/EOS ids: the model config first, then tokenizer_config.json's token texts."""
    found: dict[str, int] = {}
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text(encoding="utf-8")) if tok_config_path.is_file() else {}
    for kind in ("bos", "eos"):
        value = config.get(f"{kind}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            text = _token_text(tok_config.get(f"{kind}_token"))
            value = ids.get(text) if text else None
        if value is not None:
            found[kind] = int(value)
    return found


def add_vocabulary(writer: Any, folder: Path, config: dict[str, Any],
                   tokenizer: dict[str, Any]) -> None:
    """Write ``read_tokenizer``'s result and the BOS/EOS ids as the ``tokenizer.ggml.*`` keys."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer["pre"])
    writer.add_token_list(tokenizer["tokens"])
    writer.add_token_types(tokenizer["types"])
    writer.add_token_merges(tokenizer["merges"])
    ids = special_ids(folder, config, tokenizer["ids"])
    if "bos" in ids:
        writer.add_bos_token_id(ids["bos"])
    if "eos" in ids:
        writer.add_eos_token_id(ids["eos"])
    # lmql prepends BOS to prompts whenever the model has one (as the HF backend does)
    writer.add_add_bos_token("bos" in ids)


def export_hf_llama_to_gguf(hf_folder: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path`` (GGUF, F32 weights) from the HF Llama checkpoint in ``hf_folder``."""
    import gguf

    folder, out = Path(hf_folder), Path(out_path)
    config = read_config(folder)
    n_embd = int(config["hidden_size"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    vocab_size = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    tokenizer = read_tokenizer(folder, vocab_size)  # fails before anything is written

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    add_vocabulary(writer, folder, config, tokenizer)

    written: set[str] = set()
    for hf_name, array in iter_weights(folder):
        name = gguf_tensor_name(hf_name)
        if name is None or (tied and name == "output.weight"):
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        if name.endswith("attn_q.weight"):
            array = permute_rotary(array, n_head)
        elif name.endswith("attn_k.weight"):
            array = permute_rotary(array, n_head_kv)
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        written.add(name)
    if "token_embd.weight" not in written:
        raise ExportError(f"no model.embed_tokens.weight in {folder}")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lmql_llamacpp.export HF_FOLDER OUT.gguf", file=sys.stderr)
        return 2
    try:
        out = export_hf_llama_to_gguf(args[0], args[1])
    except (ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
