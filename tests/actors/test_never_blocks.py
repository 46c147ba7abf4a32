"""ProxyActor keeps answering while a ping is in flight."""

from __future__ import annotations

import pykka
import pytest

from rpcproxy.actors import (
    AddOutcome,
    AddPrimary,
    ApplyHeartbeat,
    HeartbeatResult,
    NotifyFailed,
    Rebalance,
    RebalanceOutcome,
    RemoveServer,
    ResetRebalanceTimer,
    SetBackups,
)

from ._fakes import TIMEOUT, A, B, C, D, E, hb
from .conftest import StartProxy

PROMPT = 10 * TIMEOUT
"""Only a bound for a hung test: the ping is held until released below, so an
answer at all shows nothing waited for it (how fast is for bench/)."""


def test_requests_are_answered_while_a_ping_is_held(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), live=(B,), gated=True)
    pending = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)

    assert h.send(lambda r: NotifyFailed(A, r)).get(timeout=PROMPT).rotated is True
    assert h.send(lambda r: AddPrimary(D, r)).get(timeout=PROMPT) == AddOutcome(D, True)
    assert h.send(lambda r: SetBackups((E,), r)).get(timeout=PROMPT) == (E,)
    assert h.send(lambda r: RemoveServer(E, r)).get(timeout=PROMPT) is True
    assert h.send(
        lambda r: ApplyHeartbeat(hb((A, "dc1"), (B, "dc1"), (C, "dc1"), (D, "dc1")), r)
    ).get(timeout=PROMPT) == HeartbeatResult(changed=False, stale=False)
    assert h.send(ResetRebalanceTimer).get(timeout=PROMPT) == 600.0
    assert h.box.current.state.active == (B, C, A, D)

    # The rebalance itself is still waiting for the network.
    with pytest.raises(pykka.Timeout):
        pending.get(timeout=0)
    h.prober.release()
    assert pending.get(timeout=TIMEOUT) == RebalanceOutcome(B, True)
