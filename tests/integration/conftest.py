"""The integration tests' fixtures and hook, defined in :mod:`tests.integration.serving`."""

from tests.integration.serving import pytest_runtest_makereport, serve_factory, standins

__all__ = ["pytest_runtest_makereport", "serve_factory", "standins"]
