"""``lmql.decorators``: variable decorators for ``"[@fn VAR]"`` (``pre``, ``streaming``, and
``LMQLDecorator`` to subclass), as LMQL 0.7.3's ``lmql.decorators``."""

from lmql_core.query.decorators import (
    LMQLDecorator,
    LMQLDecoratorFunction,
    LMQLDecoratorList,
    ProgramState,
    TemplateVariable,
    pre,
    streaming,
    wrap,
)

__all__ = ["LMQLDecorator", "LMQLDecoratorFunction", "LMQLDecoratorList", "ProgramState", "TemplateVariable",
           "pre", "streaming", "wrap"]
