"""Supervision: when any part of a running ProxyService dies, ``supervise`` exits 1.

An in-process ProxyService on loopback ports with every part on (events and
state file included). Each test kills one part, by stopping it or by making
it fail, and ``cli.supervision.supervise`` must return EXIT_FAILURE with one error
line naming that part; a healthy service returns EXIT_OK once told to stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import pytest

import rpcproxy.actors.core
from rpcproxy.actors.persist import StateFile
from rpcproxy.cli.config import Config
from rpcproxy.cli.service import ProxyService
from rpcproxy.cli.supervision import EXIT_FAILURE, EXIT_OK, supervise
from tests.integration.serving import RawClient
from tests.waiting import poll_until

# No integration mark: that marks tests that start the real ``rpcproxy serve``
# process, and this one runs the service in process.

PERIOD_S = 0.05
SUPERVISE_TIMEOUT_S = 10.0

PARTS = [
    "proxy actor",
    "rebalance timer",
    "prober",
    "state persister",
    "events publisher",
    "query socket",
    "heartbeat socket",
]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ProxyService]:
    config = dataclasses.replace(
        Config(),
        query="tcp://127.0.0.1:*",
        heartbeat_bind=("tcp://127.0.0.1:*",),
        events="tcp://127.0.0.1:*",
        state_file=str(tmp_path / "s.json"),
    )
    running = ProxyService(config)
    running.start()
    try:
        yield running
    finally:
        stopped = run_in_thread(running.stop)
        # Stopping a service with dead parts must neither raise nor hang.
        late = stopped.result(timeout=30.0)
        # Nor leave an actor running: a real process could not exit. Checked
        # before any stop_all, which would hide such a leak (issue 9, row 3).
        left = pykka.ActorRegistry.get_all()
        pykka.ActorRegistry.stop_all(timeout=10.0)  # for the next test, whatever happened
        assert late == [], f"ProxyService.stop gave up on {late}"
        assert left == [], f"actors still running after ProxyService.stop: {left}"


def run_in_thread(fn: Callable[[], Any]) -> Future[Any]:
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def child(service: ProxyService, name: str) -> pykka.ActorRef[Any]:
    refs = dict(service._children)
    assert set(refs) == {"rebalance timer", "prober"}, refs
    # The same refs the proxy actor itself reports.
    assert service._proxy is not None
    reported = dict(service._proxy.proxy().children().get(timeout=5.0))
    assert reported[name] is refs[name]
    return refs[name]


def kill(service: ProxyService, part: str) -> None:
    """Stop ``part`` the way a crash would leave it: not running."""
    if part == "proxy actor":
        assert service._proxy is not None
        service._proxy.stop(block=True, timeout=5.0)
    elif part in ("rebalance timer", "prober"):
        child(service, part).stop(block=True, timeout=5.0)
    elif part == "state persister":
        assert service._persist is not None
        service._persist.stop(block=True, timeout=5.0)
    elif part == "events publisher":
        assert service._events is not None
        service._events.stop(block=True, timeout=5.0)
    elif part == "query socket":
        assert service._query is not None
        service._query.stop()
    elif part == "heartbeat socket":
        assert service._heartbeats is not None
        service._heartbeats.stop()
    else:
        raise AssertionError(part)


def supervise_until_done(service: ProxyService, stopping: threading.Event) -> int:
    future = run_in_thread(lambda: supervise(service, stopping, period_s=PERIOD_S))
    code: int = future.result(timeout=SUPERVISE_TIMEOUT_S)
    return code


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name == "rpcproxy"
    ]


def test_a_healthy_service_has_no_dead_parts(service: ProxyService) -> None:
    assert service.dead_parts() == []
    with RawClient(service.query_endpoint) as client:
        assert client.call("ping")["pong"] is True


def test_supervise_returns_ok_when_stopping_is_set(
    service: ProxyService, caplog: pytest.LogCaptureFixture
) -> None:
    stopping = threading.Event()
    stopping.set()
    assert supervise_until_done(service, stopping) == EXIT_OK
    assert error_lines(caplog) == []


def test_supervise_keeps_watching_a_healthy_service_until_stopping(
    service: ProxyService, caplog: pytest.LogCaptureFixture
) -> None:
    checks: list[list[str]] = []
    watch = service.watch

    def counted(now: float) -> list[str]:
        dead = watch(now)
        checks.append(dead)
        return dead

    service.watch = counted  # type: ignore[method-assign]
    stopping = threading.Event()
    future = run_in_thread(lambda: supervise(service, stopping, period_s=PERIOD_S))
    with RawClient(service.query_endpoint) as client:
        poll_until(lambda: len(checks) >= 5, what="five checks")
        client.call("add_primary_server", addr="10.0.0.1")
    assert not future.done()
    assert all(dead == [] for dead in checks)
    stopping.set()
    assert future.result(timeout=SUPERVISE_TIMEOUT_S) == EXIT_OK
    assert error_lines(caplog) == []


@pytest.mark.parametrize("part", PARTS)
def test_a_dead_part_makes_supervise_fail_naming_it(
    service: ProxyService, part: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert service.dead_parts() == []
    kill(service, part)
    assert part in service.dead_parts()
    assert supervise_until_done(service, threading.Event()) == EXIT_FAILURE
    errors = error_lines(caplog)
    assert len(errors) == 1, errors
    assert part in errors[0]
    assert "stopped unexpectedly" in errors[0]


def test_only_the_dead_part_is_named(
    service: ProxyService, caplog: pytest.LogCaptureFixture
) -> None:
    kill(service, "events publisher")
    assert service.dead_parts() == ["events publisher"]
    assert supervise_until_done(service, threading.Event()) == EXIT_FAILURE
    (error,) = error_lines(caplog)
    for other in PARTS:
        if other != "events publisher":
            assert other not in error


def test_a_crashing_persister_is_noticed(
    service: ProxyService,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not an OSError (those are logged and survived): a bug kills the actor."""

    def broken(self: StateFile, state: object) -> None:
        raise RuntimeError("bug in save (test)")

    monkeypatch.setattr(StateFile, "save", broken)
    with RawClient(service.query_endpoint) as client:
        client.call("add_primary_server", addr="10.0.0.7")
    poll_until(lambda: "state persister" in service.dead_parts(), what="the persister to die")
    assert supervise_until_done(service, threading.Event()) == EXIT_FAILURE
    assert any("state persister" in line for line in error_lines(caplog))


def test_a_crashing_proxy_actor_is_noticed_and_takes_its_children_with_it(
    service: ProxyService,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A told message that raises: pykka calls on_failure, not on_stop."""

    def broken(*_args: object) -> object:
        raise RuntimeError("bug in notify_failed (test)")

    monkeypatch.setattr(rpcproxy.actors.core, "notify_failed", broken)
    timer, prober = child(service, "rebalance timer"), child(service, "prober")
    with RawClient(service.query_endpoint) as client:
        client.call("add_primary_server", addr="10.0.0.7")
        with contextlib.suppress(AssertionError):
            client.request({"op": "notify_failed_server", "addr": "10.0.0.7"}, timeout=0.5)
    poll_until(lambda: "proxy actor" in service.dead_parts(), what="the proxy actor to die")
    assert supervise_until_done(service, threading.Event()) == EXIT_FAILURE
    poll_until(lambda: not timer.is_alive() and not prober.is_alive(), what="the children to stop")


def test_a_crashing_query_thread_is_noticed(
    service: ProxyService, caplog: pytest.LogCaptureFixture
) -> None:
    """An error outside one request's handling ends the socket thread."""
    query = service._query
    assert query is not None

    def broken() -> None:
        raise RuntimeError("bug in the poll loop (test)")

    query.on_idle = broken  # type: ignore[method-assign]
    # The reply may or may not go out before the loop dies.
    with RawClient(service.query_endpoint) as client, contextlib.suppress(AssertionError):
        client.request({"op": "ping"}, timeout=0.5)
    poll_until(lambda: not query.alive, what="the query thread to end")
    assert supervise_until_done(service, threading.Event()) == EXIT_FAILURE
    assert any("query socket" in line for line in error_lines(caplog))


def test_the_watch_reports_stale_heartbeats_while_supervising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """watch() is what supervise calls: staleness logs, a dead part fails."""
    caplog.set_level(logging.INFO)
    config = dataclasses.replace(
        Config(),
        query="tcp://127.0.0.1:*",
        heartbeat_bind=("tcp://127.0.0.1:*",),
        events="",
        heartbeat_stale_s=0.1,
    )
    service = ProxyService(config)
    service.start()
    try:
        stopping = threading.Event()
        future = run_in_thread(lambda: supervise(service, stopping, period_s=PERIOD_S))
        poll_until(lambda: "no heartbeat applied for" in caplog.text, what="the staleness warning")
        stopping.set()
        assert future.result(timeout=SUPERVISE_TIMEOUT_S) == EXIT_OK
        warnings = [r for r in caplog.records if "no heartbeat applied for" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
    finally:
        service.stop()
