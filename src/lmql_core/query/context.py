"""``context`` in a query body: the run as LMQL 0.7's ``LMQLContext`` shows it.

``context.prompt`` is the prompt so far (the values of decided variables included);
``get_var``, ``get_all_vars``, ``score`` and ``get_return_value`` are coroutines as in LMQL (a
query body awaits them without ``await``, see ``calls``). The setters LMQL's own compiled code
uses (``set_model``, ``set_decoder``, ...) are no part of a program's surface and are not here.
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
