"""A ProxyActor that fails takes its children with it, so the process can exit.

pykka stops an actor whose told message raised, calling ``on_failure``
instead of ``on_stop``, and one whose ``on_start`` raised, calling neither.
Its children run on non-daemon threads: left alive, they would keep the
process from ever exiting. These tests end with no actor and no non-daemon
thread left without any help from ``ActorRegistry.stop_all()``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pykka
import pytest

import rpcproxy.actors.core as core_module
import rpcproxy.actors.proxy_actor as proxy_actor_module
from rpcproxy.actors import (
    NotifyFailed,
    ProberActor,
    ProxyActor,
    Rebalance,
    RebalanceOutcome,
    TimerActor,
)
from tests.waiting import poll_until

from ._fakes import GATE_TIMEOUT, TIMEOUT, A, B
from .conftest import StartProxy


def broken(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("a bug in the state code (test)")


_PROXY_FAMILY = tuple(f"{cls.__name__}-" for cls in (ProxyActor, TimerActor, ProberActor))
"""pykka names an actor's thread ``<class name>-<n>``."""


def nothing_left_running() -> bool:
    """No actor registered, and no thread of ProxyActor or its children that would block exit.

    Only this family's threads are looked at: other tests' threads are not
    this test's business.
    """
    threads = [
        t
        for t in threading.enumerate()
        if t.name.startswith(_PROXY_FAMILY) and not t.daemon and t.is_alive()
    ]
    return pykka.ActorRegistry.get_all() == [] and threads == []


def test_a_failing_tell_handler_stops_the_children(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    h = start_proxy(primaries=(A, B))
    children = h.ref.proxy().children().get(timeout=TIMEOUT)
    assert {name for name, _ in children} == {"rebalance timer", "prober"}
    monkeypatch.setattr(core_module, "notify_failed", broken)

    h.ref.tell(NotifyFailed(A, lambda _: None))

    poll_until(nothing_left_running, GATE_TIMEOUT, what="every actor thread to end")
    assert not h.ref.is_alive()
    assert [ref.is_alive() for _, ref in children] == [False, False]
    assert "a bug in the state code" in caplog.text  # pykka logs the failure itself


def test_a_failure_during_a_rebalance_answers_its_waiters(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = start_proxy(primaries=(A, B), live=(B,), gated=True)
    pending = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)
    monkeypatch.setattr(core_module, "notify_failed", broken)

    h.ref.tell(NotifyFailed(A, lambda _: None))
    assert h.ref.actor_stopped.wait(TIMEOUT)
    h.prober.release()

    assert pending.get(timeout=TIMEOUT) == RebalanceOutcome(A, None)
    poll_until(nothing_left_running, GATE_TIMEOUT, what="every actor thread to end")


def test_a_failing_on_start_stops_the_children(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core_module, "add_primary", broken)

    with pytest.raises(pykka.ActorDeadError):
        start_proxy(primaries=(A,))

    poll_until(nothing_left_running, GATE_TIMEOUT, what="every actor thread to end")


def test_a_child_that_will_not_stop_is_logged_not_waited_on(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ping in flight holds the prober; stopping the proxy waits a bounded time."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(proxy_actor_module, "CHILD_STOP_TIMEOUT_S", 0.05)
    h = start_proxy(primaries=(A, B), live=(B,), gated=True)
    h.ref.tell(Rebalance(lambda _: None))
    assert h.prober.entered.wait(TIMEOUT)

    assert h.ref.stop(timeout=TIMEOUT) is True  # does not wait for the held ping

    late = [r for r in caplog.records if "did not stop within" in r.getMessage()]
    assert [r.getMessage().split()[0] for r in late] == ["prober"]
    assert all(r.exc_info is None for r in caplog.records)  # one line, no traceback
    h.prober.release()
    poll_until(nothing_left_running, GATE_TIMEOUT, what="the prober to stop after its ping")
