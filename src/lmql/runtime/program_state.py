"""``from lmql.runtime.program_state import ProgramState``: what a decorator gets as ``context``."""

from lmql_core.query.decorators import ProgramState

__all__ = ["ProgramState"]
