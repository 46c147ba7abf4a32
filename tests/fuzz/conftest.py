"""The integration fixtures (a real ``rpcproxy serve``) for the fuzz tests too."""

from tests.integration.serving import (  # noqa: F401
    pytest_runtest_makereport,
    serve_factory,
)
