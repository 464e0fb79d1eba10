"""The ``openai:`` transport against a server that does not follow structured outputs:
llama-cpp-python's (``llama_cpp.server``) ignores vLLM's ``structured_outputs``, ``guided_*`` and
``response_format`` on completions. The client says so once, refuses ``generate(regex=...)``
rather than returning unconstrained text, and runs constrained LMQL variables with client-side
masks, as over LMTP from the same GGUF (the reference)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp.server.app")
pytest.importorskip("lmql_llamacpp")

import lmql  # noqa: E402
from lmql_core.errors import LMQLError  # noqa: E402
from lmql_core.lmtp.client.loop import run_sync  # noqa: E402
from lmql_core.openai_compat.client_features import ServerFeatureWarning  # noqa: E402
from tests.conftest import Server  # noqa: E402
from tests.test_constraints_engine import DATE  # noqa: E402
from tests.test_constraints_query import PROMPT, program  # noqa: E402
from tests.test_openai_llamacpp import (  # noqa: E402
    LlamaCppServer,
    folder,
    gguf,
    lmtp,
    over_lmtp,
    over_openai,
    third_party,
)

pytestmark = pytest.mark.llamacpp
__all__ = ["folder", "gguf", "lmtp", "third_party"]  # fixtures
LACKING = "does not follow regex, grammar, json_schema constraints"


def test_the_lack_is_said_once_and_generate_with_a_constraint_is_an_error(third_party: LlamaCppServer,
                                                                         folder: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = over_openai(third_party, folder)
        assert llm.model_info_sync()["model_info"]["extensions"]["constraints"] == []
        with pytest.raises(LMQLError, match="does not follow regex constraints"):
            llm.generate_sync(PROMPT, max_tokens=12, regex=DATE)
        with pytest.raises(LMQLError, match="does not follow json_schema constraints"):
            llm.generate_sync(PROMPT, max_tokens=12, json_schema={"type": "integer"})
    said = [str(w.message) for w in caught if issubclass(w.category, ServerFeatureWarning)
            and LACKING in str(w.message)]
    assert len(said) == 1 and "masked on the client instead" in said[0]


def test_a_constrained_request_is_refused_by_the_client_not_sent_unconstrained(third_party: LlamaCppServer,
                                                                              folder: str) -> None:
    llm = over_openai(third_party, folder)

    async def constrained() -> list[Any]:
        ids = await llm.encode_prompt_async(PROMPT)
        return [e async for e in llm.token_stream(ids, 12, 0.0, None, regex=DATE)]

    with pytest.raises(LMQLError, match="does not follow regex constraints"):
        run_sync(constrained())


def test_a_regex_variable_falls_back_to_client_masks(third_party: LlamaCppServer, lmtp: Server, gguf: Path,
                                                     folder: str) -> None:
    import re

    query = program(f'REGEX(D, r"{DATE}")')
    value = lmql.run_sync(query, model=over_openai(third_party, folder)).variables["D"]
    assert re.fullmatch(DATE, value)
    assert value == lmql.run_sync(query, model=over_lmtp(lmtp, gguf, folder)).variables["D"]
