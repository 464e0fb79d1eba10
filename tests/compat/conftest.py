"""tests/compat holds scripts run by ``nox -s compat`` with two Python environments, not tests."""

collect_ignore_glob = ["*.py"]
