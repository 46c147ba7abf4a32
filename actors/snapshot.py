"""The immutable view of the proxy that read-only queries are answered from.

ProxyActor is the only writer: after each change it builds a new
:class:`Snapshot` and publishes it with one reference assignment, which is
atomic in CPython. Readers on other threads take ``box.current`` once and use
that value; they never lock and never wait on the actor's mailbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpcproxy.proxy import ProxyState


@dataclass(frozen=True, slots=True)
class PublisherInfo:
    """The last heartbeat applied from one publisher."""

    name: str
    seq: int
    heard_at: float | None
    """``time.monotonic()`` when it was applied."""


@dataclass(frozen=True, slots=True)
class DiscoveryInfo:
    """The last discovery that found servers (docs/protocol.md section 10)."""

    source: str
    found: int
    at: float
    """``time.monotonic()`` when its servers were applied."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One published version of the state.

    Attributes:
        state: the server lists, node count and leader.
        rebalance_deadline: ``time.monotonic()`` value at which the next
            rebalance is due.
        version: increases with every publication, so readers can cache
            anything derived from a snapshot.
        last_heartbeat_at: ``time.monotonic()`` of the last applied heartbeat.
        publishers: the last seq and time of each publisher that sends one.
        offline: the last rebalance that probed found no server answering
            (Consul's ``IsOffline``); reported only, nothing acts on it.
        epoch: how many times the active server has changed since start
            (docs/protocol.md sections 1 and 5); replies carry it, so a
            client can tell which view it holds.
        discovery: the last discovery that found servers, or None.
    """

    state: ProxyState
    rebalance_deadline: float
    version: int
    last_heartbeat_at: float | None = None
    publishers: tuple[PublisherInfo, ...] = ()
    offline: bool = False
    epoch: int = 0
    discovery: DiscoveryInfo | None = None


class SnapshotBox:
    """Holds the latest snapshot; written by one thread, read by any."""

    def __init__(self, initial: Snapshot | None = None) -> None:
        self.current: Snapshot = initial or Snapshot(ProxyState(), float("inf"), 0)

    def publish(self, snapshot: Snapshot) -> None:
        self.current = snapshot
