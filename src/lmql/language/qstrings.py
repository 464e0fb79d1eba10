"""``from lmql.language.qstrings import TemplateVariable``: the variable a pre decorator gets."""

from lmql_core.query.decorators import TemplateVariable

__all__ = ["TemplateVariable"]
