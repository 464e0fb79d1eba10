"""Packaging beyond pyproject.toml: ship ``lmql_core_guard.pth`` at the top of site-packages, the
start-up hook that notices LMQL 0.7 installed over lmql-core (see lmql_core/base/coexistence.py)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

GUARD = "lmql_core_guard.pth"


class BuildWithGuard(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(os.path.join("src", GUARD), os.path.join(self.build_lib, GUARD))


setup(cmdclass={"build_py": BuildWithGuard})
