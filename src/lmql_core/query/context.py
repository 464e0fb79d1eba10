"""``context`` in a query body: the run as LMQL 0.7's ``LMQLContext`` shows it.

``context.prompt`` is the prompt so far (the values of decided variables included);
``get_var``, ``get_all_vars``, ``score`` and ``get_return_value`` are coroutines as in LMQL (a
query body awaits them without ``await``, see ``calls``). ``num_calls`` counts the model requests
made since the run began; LMQL counts its decoder's uncached model calls, which follow its own
request pattern, so the two agree in kind (0 before any variable, growing as the run generates),
not in number. The setters LMQL's compiled code calls before the body runs (``set_model``,
``set_decoder``, ``set_where_clause``, ``set_distribution``) are accepted in the body and, as in
LMQL 0.7.3, change nothing by then (the model, decoder and constraints are fixed when it starts)
but ``num_calls`` after ``set_model``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from lmql_core.query.result import LMQLResult

if TYPE_CHECKING:
    from lmql_core.api.llm import LLM
    from lmql_core.api.scoring import ScoringResult
    from lmql_core.query.runtime import QueryContext


class LMQLContext:
    def __init__(self, run: QueryContext) -> None:
        self._run = run

    @property
    def prompt(self) -> str:
        return self._run.prompt_text

    @property
    def interpreter(self) -> Any:
        """What LMQL's helpers read of the interpreter: the model and its identifier."""
        model = self._run.model
        return SimpleNamespace(model=model, model_identifier=model.model_identifier)

    @property
    def num_calls(self) -> int:
        if self._run.requests_before is None:
            return 0
        return self._run.model.requests - self._run.requests_before

    async def set_model(self, model: Any) -> None:
        """The run goes on with its model; but LMQL 0.7.3's interpreter makes a new decoder
        model here, one the running decoder never calls, so ``num_calls`` is 0 from now on."""
        self._run.requests_before = None

    async def set_decoder(self, method: str, **kwargs: Any) -> None:
        """No effect once the body runs (LMQL 0.7.3 has started its decoder by then)."""

    async def set_where_clause(self, where: Any) -> None:
        """No effect once the body runs (the query's constraints were read when it started)."""

    async def set_distribution(self, variable: str, values: list[Any]) -> None:
        """No effect in the body: a ``distribution`` clause is compiled with the query."""

    async def get_var(self, name: str) -> Any:
        return self._run.variables.get(name)

    async def get_all_vars(self) -> dict[str, Any]:
        return dict(self._run.variables)

    async def get_context(self, *args: Any) -> LMQLContext:
        return self

    async def get_return_value(self, *args: Any) -> LMQLResult:
        return LMQLResult(self._run.prompt_text, dict(self._run.variables))

    async def score(self, values: list[str] | str, model: LLM | str | None = None,
                    **kwargs: Any) -> ScoringResult:
        """Each value's log-probabilities as a continuation of the prompt so far (this query's
        model unless ``model=`` names another)."""
        from lmql_core import api

        return await api.score(self.prompt, values, model=model if model is not None else self._run.model)

    def __repr__(self) -> str:
        return f"<LMQLContext prompt={self.prompt!r}>"
