"""The decoders that search over whole runs of a program (``base.decoders.SEARCH_DECODERS``): the
search class each one names, all built on ``beam.BeamSearch``."""

from __future__ import annotations

from typing import Any

from lmql_core.api.llm import LLM
from lmql_core.query.beam import BeamSearch
from lmql_core.query.beam_sample import BeamSample
from lmql_core.query.beam_var import VariableBeamSearch
from lmql_core.query.best_k import BestK
from lmql_core.query.decoders import DecoderSpec
from lmql_core.query.runtime import Program
from lmql_core.query.var_decoder import VariableDecoder
from lmql_core.query.vocabulary import Vocabulary

SEARCHES: dict[str, type[BeamSearch]] = {
    "beam": BeamSearch,
    "beam_var": VariableBeamSearch,
    "var": VariableDecoder,
    "beam_sample": BeamSample,
    "best_k": BestK,
}


async def run_search(query: Any, fn: Any, program: Program, model: LLM, vocab: Vocabulary,
                     spec: DecoderSpec, args: tuple[Any, ...], inputs: dict[str, Any]) -> list[Any]:
    """The results of the search ``spec`` names (``beam`` for any other name)."""
    search = SEARCHES.get(spec.name, BeamSearch)
    return await search(query, fn, program, model, vocab, spec, args, inputs).run()
