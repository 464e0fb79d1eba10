"""``lmql.runtime.output_writer``: LMQL 0.7.3's module of output writers (``BaseOutputWriter`` to
subclass, as its documentation suggests, and the standard writers)."""

from lmql_core.query.output import (
    BaseOutputWriter,
    PrintingOutputWriter,
    StreamingOutputWriter,
    headless,
    printing,
    silent,
    stream,
)

__all__ = ["BaseOutputWriter", "PrintingOutputWriter", "StreamingOutputWriter", "headless", "printing",
           "silent", "stream"]
