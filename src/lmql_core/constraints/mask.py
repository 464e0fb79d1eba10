"""What a constraint answers at each step (``Allowed``), about what (``Value``), and its errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmql_core.errors import LMQLError


class ConstraintError(LMQLError):
    """A constraint whose arguments cannot constrain a variable (the message names the argument)."""


class NoDigits(ConstraintError, ValueError):
    """INT's value ended without a digit."""


@dataclass
class Allowed:
    """The next tokens allowed (``None``: any) and whether the variable may end now."""

    tokens: np.ndarray | None
    eos: bool

    def __and__(self, other: Allowed) -> Allowed:
        if self.tokens is None:
            tokens = other.tokens
        elif other.tokens is None:
            tokens = self.tokens
        else:
            tokens = self.tokens & other.tokens
        return Allowed(tokens, self.eos and other.eos)

    def __or__(self, other: Allowed) -> Allowed:
        tokens = None if self.tokens is None or other.tokens is None else self.tokens | other.tokens
        return Allowed(tokens, self.eos or other.eos)


ANY = Allowed(None, True)


@dataclass
class Value:
    """The variable being generated: its tokens and text so far, and the text the last token added."""

    ids: list[int]
    text: str
    diff: str
