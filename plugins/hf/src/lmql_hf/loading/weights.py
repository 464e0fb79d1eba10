"""Turning ``serve-model`` options into a ``from_pretrained`` call, and describing the result."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmql_core.plugin import LMQLError, call_text
from lmql_core.plugin import versions as installed_versions
from lmql_hf.loading import deferred

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
QUANTIZED = {"8bit": {"load_in_8bit": True}, "4bit": {"load_in_4bit": True}}
console = Console(stderr=True)


def loader_kwargs(cuda: bool, dtype: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``AutoModelForCausalLM.from_pretrained``."""
    result = dict(kwargs)
    if isinstance(result.get("max_memory"), dict):  # JSON keys are text; accelerate wants GPU numbers
        result["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in result["max_memory"].items()}
    if cuda:
        if not torch.cuda.is_available():
            raise LMQLError("--cuda was given but torch sees no CUDA device "
                            f"(torch {torch.__version__}; is this a CPU-only build?)")
        # several visible GPUs: accelerate spreads the layers over all of them
        result.setdefault("device_map", "auto" if torch.cuda.device_count() > 1 else "cuda")
    if dtype in QUANTIZED:
        try:
            importlib.import_module("bitsandbytes")
        except ImportError:
            raise LMQLError(f"--dtype {dtype} needs bitsandbytes: pip install bitsandbytes") from None
        from transformers import BitsAndBytesConfig

        result.setdefault("quantization_config", BitsAndBytesConfig(**QUANTIZED[dtype]))
    elif dtype is not None:
        if dtype not in DTYPES:
            known = ", ".join(list(DTYPES) + list(QUANTIZED))
            raise LMQLError(f"unknown --dtype '{dtype}'; use one of {known}")
        result["dtype"] = DTYPES[dtype]
    for key in ("torch_dtype", "dtype"):  # given as loader arguments: names, checked here
        if isinstance(result.get(key), str) and result[key] != "auto":
            result[key] = _dtype_named(key, result[key])
    return result


def _dtype_named(option: str, name: str) -> torch.dtype:
    found = DTYPES.get(name) or getattr(torch, name, None)
    if not isinstance(found, torch.dtype):
        raise LMQLError(f"unknown --{option} '{name}'; use auto or one of {', '.join(DTYPES)}")
    return found


WEIGHT_FILES = ("*.safetensors", "*.bin")


def read_ahead(path: str) -> None:
    """A model folder's weight files read into the page cache on a thread, while this one imports
    transformers' model code (seconds, holding the interpreter's lock); loading then finds them
    there. Errors are left to the loading itself, which meets them again."""
    folder = Path(path)
    files = [f for pattern in WEIGHT_FILES for f in folder.glob(pattern)] if folder.is_dir() else []
    if files and hasattr(os, "posix_fadvise"):
        threading.Thread(target=_will_need, args=(files,), name="lmql-hf-read-ahead", daemon=True).start()


def _will_need(files: list[Path]) -> None:
    with contextlib.suppress(OSError):
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def load_weights(path: str, kwargs: dict[str, Any], progress: bool) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)``, printing how long it took (a part
    of the start-up that the server's "Ready" line sums up). transformers' imports of modules that
    loading and serving never run are deferred (``deferred``)."""
    began = time.perf_counter()
    with deferred.deferred(), progress_bars(progress):
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    console.print(f"Loaded the weights in {time.perf_counter() - began:.1f} s")
    return loaded


@contextlib.contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """Loading shows transformers' progress bars only when asked (``--progress True``): a
    library call stays quiet and the application decides, as with other libraries."""
    from transformers.utils import logging as hf_logging

    hide = not shown and hf_logging.is_progress_bar_enabled()
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


def constructor_call(name: str, kwargs: dict[str, Any]) -> str:
    return call_text("AutoModelForCausalLM.from_pretrained", name, **kwargs)


def devices_of(model: Any) -> list[str]:
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        return sorted({str(d) for d in device_map.values()})
    return sorted({str(p.device) for p in model.parameters()})


def layer_placement(model: Any) -> dict[str, str]:
    """Which module sits on which device, when accelerate spread the model."""
    return {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}


def versions() -> dict[str, str]:
    return installed_versions("torch", "transformers", "accelerate", "lmql-hf", "lmql-core")


def layer_devices(model: Any, layers: int, default: torch.device) -> list[torch.device]:
    """The device of each decoder layer (they differ when accelerate spread the model)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return [next(layer.parameters()).device for layer in module]
    return [default] * layers
