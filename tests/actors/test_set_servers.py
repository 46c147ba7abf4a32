"""``set_servers`` in the actor: probe every address, keep those that answer, else nothing."""

from __future__ import annotations

from rpcproxy.actors import (
    Rebalance,
    Refused,
    SetServers,
    SetServersOutcome,
)

from ._fakes import TIMEOUT, A, B, C, D, E
from .conftest import StartProxy


def test_the_answering_servers_become_the_primaries(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), backups=(E,), live=(C, D))
    outcome, snapshot = h.request_seen(lambda r: SetServers((C, B, D), reply=r))
    assert outcome == SetServersOutcome(servers=(C, D), dropped=(B,))
    # The reply comes after the publish: the snapshot it sees holds the change.
    assert snapshot.state.primaries == (C, D)
    assert snapshot.state.backups == (E,)
    assert snapshot.state.active == (C, D, E)
    # Every address was probed (this fake has no ``every``: one at a time).
    assert sorted(h.prober.calls) == sorted([(C,), (B,), (D,)])


def test_every_address_is_probed_not_only_up_to_the_first_answer(start_proxy: StartProxy) -> None:
    h = start_proxy(live=(A, B, C))
    outcome = h.request(lambda r: SetServers((A, B, C), reply=r))
    assert outcome.servers == (A, B, C)
    probed = {addr for call in h.prober.calls for addr in call}
    assert probed == {A, B, C}


def test_none_answering_is_unavailable_and_changes_nothing(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), live=())
    before = h.box.current
    outcome = h.request(lambda r: SetServers((B, C), reply=r))
    assert outcome == Refused("no server answered a probe (2 probed)", "unavailable")
    assert h.box.current.state == before.state
    assert h.box.current.epoch == before.epoch


def test_force_keeps_every_address_and_probes_none(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), live=())
    outcome = h.request(lambda r: SetServers((B, C), force=True, reply=r))
    assert outcome == SetServersOutcome(servers=(B, C), dropped=())
    assert h.state.active == (B, C)
    assert h.prober.call_count() == 0


def test_a_set_servers_waiting_on_its_probe_is_answered_at_stop(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), live=(B,), gated=True)
    pending = h.send(lambda r: SetServers((B,), reply=r))
    assert h.prober.entered.wait(TIMEOUT)
    h.ref.stop(block=False)
    h.prober.release()
    answer = pending.get(timeout=TIMEOUT)
    # Either the probe's answer came back first, or the stop answered it.
    assert answer in (
        SetServersOutcome(servers=(B,), dropped=()),
        Refused("the proxy is stopping", "unavailable"),
    )


def test_a_rebalance_and_a_set_servers_in_flight_each_get_their_own_answers(
    start_proxy: StartProxy,
) -> None:
    h = start_proxy(primaries=(A, B), live=(B, C), gated=True)
    rebalance = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)
    setting = h.send(lambda r: SetServers((C, D), reply=r))
    h.prober.release()
    assert rebalance.get(timeout=TIMEOUT).healthy is True
    assert setting.get(timeout=TIMEOUT) == SetServersOutcome(servers=(C,), dropped=(D,))
    assert h.state.primaries == (C,)
