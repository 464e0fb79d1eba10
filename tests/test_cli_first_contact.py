"""A new user's mistakes at the `lmql` command, each one `Error:` line saying what to do (issue 28)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("lmql_hf")

from lmql_core.errors import LMQLError  # noqa: E402
from tests.conftest import run_lmql, the_error  # noqa: E402

pytestmark = pytest.mark.hf


# --- point 2: an unknown hf loader key is refused before the weights load --------------------

def test_an_unknown_hf_loader_key_is_refused_before_the_weights_load() -> None:
    began = time.monotonic()
    result = run_lmql("serve-model", "--bogus-flag", "1", "--port", "0", env={"HF_HUB_OFFLINE": "1"})
    error = the_error(result)
    assert "Loaded the weights" not in result.stderr
    assert "--bogus_flag" in error
    for accepted in ("--max_batch", "--torch_dtype", "--trust_remote_code", "--num_hidden_layers"):
        assert accepted in error, error
    assert time.monotonic() - began < 120  # a bound on a hang; the weights never load


def test_from_pretrained_keys_and_config_fields_pass_the_check() -> None:
    from lmql_hf.bundled import bundled_path
    from lmql_hf.loader_keys import check

    path = str(bundled_path("lmql-tiny"))
    check(path, {"torch_dtype": "float32", "attn_implementation": "eager", "use_cache": False,
                 "rms_norm_eps": 1e-5}, {})
    with pytest.raises(LMQLError, match="no option --bogus_flag, --n_ctx;"):
        check(path, {"bogus_flag": 1, "use_cache": False, "n_ctx": 8}, {})
