"""What a discovery's servers do to the state (docs/protocol.md section 10)."""

from __future__ import annotations

import logging

import pytest

from rpcproxy.actors import ApplyDiscovery, Rebalance, RemoveServer

from ._fakes import TIMEOUT, A, B, C, D, E, FakeClock
from .conftest import StartProxy


def test_found_servers_replace_the_backups_and_are_recorded(start_proxy: StartProxy) -> None:
    clock = FakeClock()
    h = start_proxy(primaries=(A,), backups=(B,), live=(A,), clock=clock)
    changed, snapshot = h.request_seen(lambda r: ApplyDiscovery("consul", (C, D), r))
    assert changed is True
    assert snapshot.state.backups == (C, D)
    assert snapshot.state.primaries == (A,)
    assert snapshot.state.active == (A, C, D)
    assert snapshot.discovery is not None
    assert (snapshot.discovery.source, snapshot.discovery.found, snapshot.discovery.at) == (
        "consul",
        2,
        clock.now,
    )


def test_the_same_answer_again_changes_nothing_but_the_record(start_proxy: StartProxy) -> None:
    clock = FakeClock()
    h = start_proxy(primaries=(A,), live=(A,), clock=clock)
    assert h.request(lambda r: ApplyDiscovery("dns", (C,), r)) is True
    epoch = h.box.current.epoch
    clock.advance(60)
    assert h.request(lambda r: ApplyDiscovery("dns", (C,), r)) is False
    snapshot = h.box.current
    assert snapshot.discovery is not None and snapshot.discovery.at == clock.now
    assert snapshot.epoch == epoch


def test_with_no_primaries_new_backups_are_rebalanced_at_once(start_proxy: StartProxy) -> None:
    """A proxy left with dead backups only moves to a found live one without waiting."""
    h = start_proxy(backups=(B, C), live=(D,))
    calls = h.prober.call_count()
    assert h.request(lambda r: ApplyDiscovery("consul", (B, D), r)) is True
    # The rebalance it started probes the new list and puts the live server first.
    assert h.prober.wait_calls(calls + 1, TIMEOUT)
    outcome = h.request(Rebalance)  # waits behind (or shares) that rebalance
    assert outcome.server == D
    assert h.state.active[0] == D


def test_while_offline_new_backups_are_rebalanced_at_once(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=())
    assert h.request(Rebalance).healthy is False
    assert h.box.current.offline is True
    h.prober.set_live(E)
    calls = h.prober.call_count()
    assert h.request(lambda r: ApplyDiscovery("dns", (E,), r)) is True
    assert h.prober.wait_calls(calls + 1, TIMEOUT)
    assert h.request(Rebalance).server == E


def test_an_online_proxy_with_primaries_waits_for_its_timer(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    h = start_proxy(primaries=(A, B), live=(A, B))
    with caplog.at_level(logging.INFO, logger="rpcproxy.actors.core"):
        assert h.request(lambda r: ApplyDiscovery("dns", (E,), r)) is True
        assert h.request(lambda r: ApplyDiscovery("dns", (C,), r)) is True
    # The line is logged before the reply whenever a rebalance starts.
    assert "rebalancing now" not in caplog.text
    with caplog.at_level(logging.INFO, logger="rpcproxy.actors.core"):
        h.request(lambda r: RemoveServer(A, r))
        h.request(lambda r: RemoveServer(B, r))
        assert h.request(lambda r: ApplyDiscovery("dns", (D,), r)) is True
    assert "discovery (dns) changed the backups: rebalancing now" in caplog.text


def test_found_servers_during_a_rebalance_get_one_of_their_own(start_proxy: StartProxy) -> None:
    """The running rebalance probes the old candidates; the new ones are probed right after."""
    h = start_proxy(backups=(B, C), live=(D,), gated=True)
    running = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)  # probing B and C, both dead
    assert h.request(lambda r: ApplyDiscovery("dns", (D, E), r)) is True
    h.prober.release()
    running.get(timeout=TIMEOUT)
    # A second rebalance, of the found servers, follows without the timer.
    assert h.prober.wait_calls(2, TIMEOUT)
    assert h.request(Rebalance).server == D
    assert any(D in call for call in h.prober.calls[1:])
