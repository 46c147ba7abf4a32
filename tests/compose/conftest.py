"""Fixtures of the compose tests: one prepared session, one fresh project per test.

Without a Docker engine (or a compose command) the tests are skipped with the
reason, except under ``CI=true``, where that is an error: CI must not pass
while silently skipping them. Nothing touches Docker unless a compose test is
selected and about to run.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.compose.compose import (
    DISCOVERY_FILES,
    DNS_SERVICE,
    MOVED_SERVICES,
    ComposeError,
    ComposeProject,
    ComposeSetup,
    docker_unavailable_reason,
    prepare_discovery,
    prepare_session,
)
from tests.helpers import in_ci

PROJECT_KEY = pytest.StashKey[ComposeProject]()
MEASUREMENTS_KEY = pytest.StashKey[list[str]]()
FAILURE_LOG_SERVICES = ("proxy", "client", DNS_SERVICE)
"""Whose logs a failed test's report gets (those the project has)."""
FAILURE_LOG_TAIL = 200


@pytest.fixture(scope="session")
def compose_setup() -> ComposeSetup:
    """Prepared once per session (pytest caches a skip or failure here too)."""
    reason = docker_unavailable_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(
                f"compose tests cannot run under CI=true: {reason}. "
                "CI must provide a Docker engine (or deselect them with -m 'not compose').",
                pytrace=False,
            )
        pytest.skip(f"compose tests need Docker: {reason}")
    return prepare_session()


@pytest.fixture(scope="session")
def discovery_setup(compose_setup: ComposeSetup) -> ComposeSetup:
    """:func:`compose_setup`, plus the name server's image (once per session)."""
    prepare_discovery(compose_setup)
    return compose_setup


def _fresh(project: ComposeProject, request: pytest.FixtureRequest) -> Iterator[ComposeProject]:
    """``project`` up with every service ready and the proxy knowing all servers.

    Torn down with ``down -v`` whatever happens; a failing test's report gets
    the proxy's and the client's logs (see ``pytest_runtest_makereport``).
    """
    request.node.stash[PROJECT_KEY] = project
    try:
        project.up()
        project.wait_for_servers()
        yield project
    finally:
        project.down()


@pytest.fixture
def project(
    compose_setup: ComposeSetup, request: pytest.FixtureRequest
) -> Iterator[ComposeProject]:
    """A fresh project of docker-compose.yml (see :func:`_fresh`)."""
    yield from _fresh(ComposeProject(compose_setup), request)


@pytest.fixture
def discovery_project(
    discovery_setup: ComposeSetup, request: pytest.FixtureRequest
) -> Iterator[ComposeProject]:
    """A fresh project of docker-compose.yml with docker-compose.discovery.yml:
    the name server up, the proxy discovering with it, and the ``moved``
    stand-ins left for the test to start (see :func:`_fresh`)."""
    project = ComposeProject(discovery_setup, files=DISCOVERY_FILES, later=MOVED_SERVICES)
    yield from _fresh(project, request)


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines to print in the session summary (measured times and such)."""
    lines = request.config.stash.setdefault(MEASUREMENTS_KEY, [])
    mine: list[str] = []
    yield mine
    lines.extend(f"{request.node.name}: {line}" for line in mine)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the proxy's, the client's (and the name server's) logs to a failed test's report."""
    report = yield
    project = item.stash.get(PROJECT_KEY, None)
    if report.when == "call" and report.failed and project is not None:
        try:
            services = set(project.services())
        except ComposeError:
            services = set(FAILURE_LOG_SERVICES[:2])
        for service in (s for s in FAILURE_LOG_SERVICES if s in services):
            logs = project.logs(service, tail=FAILURE_LOG_TAIL)
            report.sections.append((f"logs of {service} ({project.name})", logs))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(MEASUREMENTS_KEY, [])
    if lines:
        terminalreporter.section("compose measurements")
        for line in lines:
            terminalreporter.line(line)
