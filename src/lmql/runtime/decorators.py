"""``lmql.runtime.decorators``: LMQL 0.7.3's path of ``lmql.decorators``."""

from lmql.decorators import *  # noqa: F403
from lmql.decorators import __all__  # noqa: F401
