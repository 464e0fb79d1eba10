"""Which ``--KEY VALUE`` pairs ``AutoModelForCausalLM.from_pretrained`` takes, so that a mistyped
one is refused in one line before the weights load (it was a ``TypeError`` from the model's
constructor after loading, issue 28).

From the installed transformers: the keywords ``from_pretrained`` names or pops from its
``**kwargs`` (the auto class's and ``PreTrainedModel``'s), and the fields of the model's config,
which it sets from any other key.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

from lmql_core.plugin import LMQLError
from lmql_hf.loading.deferred import deferred

_POPPED = re.compile(r"kwargs\.(?:pop|get)\(\s*[\"'](\w+)[\"']")


@functools.cache
def from_pretrained_keys() -> frozenset[str]:
    with deferred():  # as in loading: these import transformers' generation code
        from transformers import PreTrainedModel
        from transformers.models.auto.auto_factory import _BaseAutoModelClass

    keys: set[str] = set()
    for method in (_BaseAutoModelClass.from_pretrained, PreTrainedModel.from_pretrained):
        function = inspect.unwrap(method)
        keys.update(name for name, p in inspect.signature(function).parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        keys.update(_POPPED.findall(inspect.getsource(function)))
    keys.discard("pretrained_model_name_or_path")
    return frozenset(key for key in keys if not key.startswith("_"))


# what AutoConfig.from_pretrained needs of the loader's arguments to find the same config
_HUB_KEYS = ("cache_dir", "code_revision", "force_download", "local_files_only", "proxies", "revision",
             "subfolder", "token", "trust_remote_code")


def config_fields(path: str, loader_kwargs: dict[str, Any]) -> frozenset[str] | None:
    """The fields of the model's config (None where it cannot be read: the loader will say why)."""
    from transformers import AutoConfig

    hub_kwargs = {key: loader_kwargs[key] for key in _HUB_KEYS if key in loader_kwargs}
    try:
        config = AutoConfig.from_pretrained(path, **hub_kwargs)
    except Exception:
        return None
    return frozenset(key for key in config.to_dict() if not key.startswith("_"))


def check(path: str, given: dict[str, Any], loader_kwargs: dict[str, Any]) -> None:
    """An LMQLError naming every key ``given`` (beyond the backend's own options) that neither
    ``from_pretrained`` nor the model's config takes, with the ones they do; ``loader_kwargs``:
    what goes to ``from_pretrained``, to find the config as it will."""
    unknown = [key for key in given if key not in from_pretrained_keys()]
    if not unknown:
        return
    fields = config_fields(path, loader_kwargs)
    if fields is None:
        return
    unknown = [key for key in unknown if key not in fields]
    if unknown:
        named = ", ".join(f"--{key}" for key in unknown)
        raise LMQLError(
            f"the hf backend has no option {named}; {_own_options()}; from_pretrained takes "
            f"--{', --'.join(sorted(from_pretrained_keys()))}; the model's config takes "
            f"--{', --'.join(sorted(fields))}")


def _own_options() -> str:
    from lmql_core.plugin import backend_for_name

    return backend_for_name("hf").options.known().partition("; other keys go to")[0]
