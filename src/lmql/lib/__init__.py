"""``lmql.lib``: libraries for LMQL programs (``lmql.lib.chat``)."""
