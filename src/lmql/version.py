"""``lmql.version`` (also ``lmql.version_info``): the installed version, as LMQL 0.7.3's module
(``version``, ``commit``, ``build_on``); here lmql-core's own version."""

from lmql_core import __version__ as version

commit = "release"  # lmql-core builds record no commit or build date
build_on = "release"

__all__ = ["build_on", "commit", "version"]
