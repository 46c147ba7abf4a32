"""ProxyActor and ``max_servers`` (docs/protocol.md section 8): refusals change nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pykka
import pytest

from rpcproxy.actors import (
    AddOutcome,
    AddPrimary,
    ProxyActor,
    ProxySettings,
    Refused,
    RemoveServer,
    SetBackups,
)
from rpcproxy.proxy import ProxyState, add_primary

from ._fakes import TIMEOUT, FakeProber, Harness, RecordingBox, addr

A, B, C, X = addr("a"), addr("b"), addr("c"), addr("x")


@pytest.fixture
def start() -> Iterator[Callable[[ProxySettings], Harness]]:
    refs: list[pykka.ActorRef[ProxyActor]] = []

    def start(settings: ProxySettings) -> Harness:
        prober, box = FakeProber(()), RecordingBox()
        ref = ProxyActor.start(settings, prober, box)
        refs.append(ref)
        assert ref.proxy().started().get(timeout=TIMEOUT) is True
        return Harness(ref, box, prober, lambda: 0.0)

    yield start
    for ref in refs:
        ref.stop(timeout=TIMEOUT)


def test_writes_beyond_max_servers_are_refused_and_change_nothing(
    start: Callable[[ProxySettings], Harness],
) -> None:
    h = start(ProxySettings(primary_servers=(A, B), max_servers=3))
    assert h.request(lambda r: AddPrimary(C, r)) == AddOutcome(C, True)
    version = h.box.current.version
    refused = h.request(lambda r: AddPrimary(X, r))
    assert isinstance(refused, Refused) and "max_servers (3)" in refused.reason
    refused = h.request(lambda r: SetBackups((X,), r))
    assert isinstance(refused, Refused) and "4 servers" in refused.reason
    # Nothing was published for the refusals, and the lists are as before.
    assert h.box.current.version == version
    assert h.state.active == h.state.primaries == (A, B, C)
    # Known servers still fit: as a backup, or added again.
    assert h.request(lambda r: SetBackups((C,), r)) == (C,)
    assert h.request(lambda r: AddPrimary(A, r)) == AddOutcome(A, False)


def test_a_restored_state_beyond_max_servers_is_cut_with_one_warning(
    start: Callable[[ProxySettings], Harness], caplog: pytest.LogCaptureFixture
) -> None:
    """Held whole, it refused every add until servers left; now its first servers stay."""
    restored = ProxyState()
    for server in (A, B, C):
        restored, _ = add_primary(restored, server)
    settings = ProxySettings(restored=restored, primary_servers=(X,), max_servers=2)
    h = start(settings)
    assert h.state.active == h.state.primaries == (A, B)
    cut = [r.getMessage() for r in caplog.records if "restored state holds" in r.getMessage()]
    assert len(cut) == 1 and "dropped 1" in cut[0], cut
    # Full: the configured X did not fit, and an add is refused...
    assert isinstance(h.request(lambda r: AddPrimary(X, r)), Refused)
    # ...until a server leaves: the proxy is not wedged.
    assert h.request(lambda r: RemoveServer(B, r)) is True
    assert h.request(lambda r: AddPrimary(X, r)) == AddOutcome(X, True)
    assert h.state.active == (A, X)
