"""The ``offline`` flag: set by a rebalance nobody answered, cleared by one somebody did."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping, Sequence

import pytest

from rpcproxy.actors import AddPrimary, Rebalance, RebalanceOutcome, RemoveServer
from rpcproxy.proxy import Address

from ._fakes import A, B, C, FakeProber
from .conftest import StartProxy

REBALANCES = 100


class CoinProber(FakeProber):
    """Each ping fails with ``fail`` probability, from a seeded Random (Consul's test)."""

    def __init__(self, fail: float, seed: int) -> None:
        super().__init__()
        self._coin = random.Random(seed)
        self._fail = fail
        self._lock = threading.Lock()
        self.answered: list[bool] = []
        """Per probed rebalance: did any server answer?"""

    def __call__(self, candidates: Sequence[Address]) -> Mapping[Address, bool]:
        with self._lock:
            result = {c: self._coin.random() >= self._fail for c in candidates}
            self.answered.append(any(result.values()))
        return result


def test_offline_follows_the_last_pinged_rebalance(start_proxy: StartProxy) -> None:
    prober = CoinProber(0.5, seed=11)
    h = start_proxy(primaries=(A, B), prober=prober)
    assert h.box.current.offline is False
    seen: set[bool] = set()

    for _ in range(REBALANCES):
        outcome, snapshot = h.request_seen(Rebalance)
        assert outcome.healthy is prober.answered[-1]
        # The reply comes after the publish, so the snapshot already says it.
        assert snapshot.offline is not prober.answered[-1]
        seen.add(snapshot.offline)

    assert len(prober.answered) == REBALANCES
    assert seen == {True, False}


def test_a_rebalance_that_pings_nobody_leaves_it(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=())
    _, snapshot = h.request_seen(Rebalance)
    assert snapshot.offline is True

    assert h.request(lambda reply: RemoveServer(B, reply)) is True
    outcome, snapshot = h.request_seen(Rebalance)
    assert outcome == RebalanceOutcome(A, None)
    assert snapshot.offline is True  # one server: nothing probed, nothing learned

    h.prober.set_live(C)
    h.request(lambda reply: AddPrimary(C, reply))
    outcome, snapshot = h.request_seen(Rebalance)
    assert outcome.healthy is True
    assert snapshot.offline is False
    # Reported, not acted on: the head is still whatever the lists say.
    assert snapshot.state.head is not None


def test_each_flip_logs_one_line(start_proxy: StartProxy, caplog: pytest.LogCaptureFixture) -> None:
    h = start_proxy(primaries=(A, B), live=())
    with caplog.at_level(logging.INFO, logger="rpcproxy.actors.core"):
        h.request(Rebalance)
        h.request(Rebalance)  # still offline: no second line
        h.prober.set_live(A)
        h.request(Rebalance)
        h.request(Rebalance)  # still online: no second line
    flips = [r for r in caplog.records if "offline" in r.getMessage() or "online" in r.getMessage()]
    assert [(r.levelno, "back" in r.getMessage()) for r in flips] == [
        (logging.WARNING, False),
        (logging.INFO, True),
    ]
