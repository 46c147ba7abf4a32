"""When discovery asks its sources, and what it tells the actor (docs/protocol.md section 10).

The sources here are in-memory twins (their own tests run against dnsmasq and
a Consul stand-in); the clock is a test clock; the actor is a recorder.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pykka
import pytest

from rpcproxy.actors import ApplyDiscovery, Snapshot, SnapshotBox
from rpcproxy.bus.service.discovery import DiscoveryError, SourceName
from rpcproxy.bus.service.discovery.part import Discoverer, why_discover
from rpcproxy.bus.service.metrics import Metrics
from rpcproxy.proxy import (
    Address,
    Heartbeat,
    HeartbeatServer,
    LocalIdentity,
    ProxyState,
    add_primary,
    apply_heartbeat,
    parse_address,
)
from tests.waiting import poll_until

A, B, C = (parse_address(f"{name}.nomad") for name in "abc")
STALE_S = 60.0
INTERVAL_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A source that answers what the test scripted, one answer per call."""

    def __init__(self, name: SourceName, *answers: tuple[Address, ...] | Exception) -> None:
        self.name: SourceName = name
        self._answers = list(answers)
        self.calls = 0
        self.closed = False

    def discover(self) -> tuple[Address, ...]:
        self.calls += 1
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


class Recorder(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.told: list[Any] = []
        self.lock = threading.Lock()

    def on_receive(self, message: Any) -> Any:
        with self.lock:
            self.told.append(message)
        return None

    def seen(self) -> list[Any]:
        with self.lock:
            return list(self.told)


@pytest.fixture
def recorder() -> Iterator[pykka.ActorRef[Recorder]]:
    ref = Recorder.start()
    yield ref
    ref.stop()


def told(ref: pykka.ActorRef[Recorder]) -> list[Any]:
    seen: list[Any] = ref.proxy().seen().get(timeout=5)  # after every earlier tell
    return seen


def snapshot(
    *primaries: Address, heard_at: float | None = None, leader: str = "", offline: bool = False
) -> Snapshot:
    state = ProxyState()
    for addr in primaries:
        state, _ = add_primary(state, addr)
    if heard_at is not None:
        servers = tuple(HeartbeatServer(a.canonical, 1, 1, "dc1") for a in primaries)
        state = apply_heartbeat(state, Heartbeat(servers, 3, leader), LocalIdentity()).state
    return Snapshot(state, float("inf"), 1, last_heartbeat_at=heard_at, offline=offline)


# --- why -------------------------------------------------------------------------


def test_a_proxy_with_live_heartbeats_needs_nothing() -> None:
    assert why_discover(snapshot(A, heard_at=990.0, leader="x"), 1000.0, 0.0, STALE_S) is None


@pytest.mark.parametrize(
    ("seen", "since", "expected"),
    [
        (snapshot(), 1000.0, "no server known"),
        (snapshot(A, heard_at=990.0, leader="x", offline=True), 0.0, "offline"),
        (snapshot(A, heard_at=940.0, leader="x"), 0.0, "no heartbeat for 60 s"),
        (snapshot(A, heard_at=990.0, leader=""), 0.0, "the last heartbeat named no leader"),
        # Configured servers, no heartbeat ever: stale once the proxy is as old as stale_s.
        (snapshot(A), 940.0, "no heartbeat for 60 s"),
    ],
)
def test_each_trigger(seen: Snapshot, since: float, expected: str) -> None:
    assert why_discover(seen, 1000.0, since, STALE_S) == expected


def test_configured_servers_are_given_stale_s_before_any_heartbeat() -> None:
    assert why_discover(snapshot(A), 1000.0, 941.0, STALE_S) is None


# --- rounds ----------------------------------------------------------------------


def discoverer(
    recorder: pykka.ActorRef[Recorder],
    box: SnapshotBox,
    sources: Sequence[Source],
    clock: Clock,
    metrics: Metrics | None = None,
) -> Discoverer:
    return Discoverer(
        sources,
        box,
        recorder,
        interval_s=INTERVAL_S,
        stale_s=STALE_S,
        metrics=metrics or Metrics(),
        clock=clock,
    )


def test_the_first_source_with_servers_wins(recorder: pykka.ActorRef[Recorder]) -> None:
    clock = Clock()
    consul = Source("consul", DiscoveryError("connection refused"))
    dns = Source("dns", (B, C))
    metrics = Metrics()
    part = discoverer(recorder, SnapshotBox(snapshot()), [consul, dns], clock, metrics)
    assert part.step() is True
    assert told(recorder) == [ApplyDiscovery("dns", (B, C))]
    assert (consul.calls, dns.calls) == (1, 1)
    counted = metrics.discoveries
    assert counted.labels("consul", "failed")._value.get() == 1
    assert counted.labels("dns", "found")._value.get() == 1


def test_an_empty_or_failed_round_tells_nothing(recorder: pykka.ActorRef[Recorder]) -> None:
    clock = Clock()
    part = discoverer(
        recorder,
        SnapshotBox(snapshot()),
        [Source("consul", ()), Source("dns", DiscoveryError("timed out"))],
        clock,
    )
    assert part.step() is False
    assert told(recorder) == []


def test_rounds_are_an_interval_apart_while_needed(recorder: pykka.ActorRef[Recorder]) -> None:
    clock = Clock()
    source = Source("consul", DiscoveryError("refused"), (A,))
    part = discoverer(recorder, SnapshotBox(snapshot()), [source], clock)
    assert part.step() is False
    clock.now += INTERVAL_S - 1
    assert part.step() is False  # too soon: the source is not asked again
    assert source.calls == 1
    clock.now += 1
    assert part.step() is True
    assert source.calls == 2


def test_nothing_is_asked_while_heartbeats_flow(recorder: pykka.ActorRef[Recorder]) -> None:
    clock = Clock()
    source = Source("dns", (A,))
    box = SnapshotBox(snapshot(A, heard_at=clock.now, leader="x"))
    part = discoverer(recorder, box, [source], clock)
    for _ in range(5):
        clock.now += 10
        box.publish(replace(box.current, last_heartbeat_at=clock.now))
        assert part.step() is False
    assert source.calls == 0
    clock.now += STALE_S  # the publisher died
    assert part.step() is True
    assert source.calls == 1


def test_stop_closes_the_sources_and_the_thread(recorder: pykka.ActorRef[Recorder]) -> None:
    source = Source("dns", (A,))
    part = Discoverer([source], SnapshotBox(snapshot()), recorder, interval_s=60, stale_s=60)
    part.start()
    assert part.alive
    # A proxy with no server asks at start, without waiting an interval.
    poll_until(lambda: told(recorder) == [ApplyDiscovery("dns", (A,))], what="the first round")
    part.stop(5.0)
    assert not part.alive
    assert source.closed


def test_it_needs_a_source() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        Discoverer(
            [], SnapshotBox(), pykka.ActorRef.__new__(pykka.ActorRef), interval_s=1, stale_s=1
        )
