"""The messages actors exchange: frozen values, checked before they get here.

Every request that expects an answer carries a ``reply`` callable, invoked
exactly once from the actor's thread after the new snapshot is published, so
the caller's reply can never show an older state than its own write
(read-your-writes). Callers that want a future pass ``future.set``; the query
server passes a function that queues the answer and wakes its poller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from rpcproxy.proxy import Address, Heartbeat

T = TypeVar("T")
Reply = Callable[[Any], None]
"""Called once with the operation's result (one of the *Result types below)."""


def no_reply(_: object) -> None:
    """The reply of fire-and-forget messages, such as heartbeats from the SUB socket."""


# Requests to ProxyActor ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifyFailed:
    addr: Address
    reply: Reply = no_reply


@dataclass(frozen=True, slots=True)
class AddPrimary:
    addr: Address
    reply: Reply = no_reply


@dataclass(frozen=True, slots=True)
class SetBackups:
    addrs: tuple[Address, ...]
    reply: Reply = no_reply


@dataclass(frozen=True, slots=True)
class RemoveServer:
    addr: Address
    reply: Reply = no_reply


@dataclass(frozen=True, slots=True)
class ApplyHeartbeat:
    heartbeat: Heartbeat
    reply: Reply = no_reply


def _nothing() -> None:
    """The default ``done`` of :class:`ApplyHeartbeats`."""


@dataclass(frozen=True, slots=True)
class ApplyHeartbeats:
    """The pending heartbeats of the SUB socket, the latest of each publisher.

    Applied in order, with one published snapshot for the whole batch. The
    sender keeps at most one of these in the mailbox (docs/protocol.md section 2,
    heartbeats are state): it conflates what arrives meanwhile and sends the
    next batch only once ``done`` has been called, which ProxyActor does when
    it has applied this one (whatever happened). So a flood costs the mailbox
    one message, never a backlog, and the sender can pace the batches by how
    long the last one took.
    """

    heartbeats: tuple[Heartbeat, ...]
    done: Callable[[], None] = _nothing


@dataclass(frozen=True, slots=True)
class Rebalance:
    reply: Reply = no_reply


@dataclass(frozen=True, slots=True)
class ResetRebalanceTimer:
    reply: Reply = no_reply


# Results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddResult:
    server: Address
    added: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The result of a write refused as bad input (a bound, docs/protocol.md section 8).

    Nothing changed; the query socket answers ``bad_request`` with ``reason``.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    changed: bool
    stale: bool


@dataclass(frozen=True, slots=True)
class RebalanceResult:
    """``healthy`` is None when fewer than two servers meant nothing was pinged."""

    server: Address | None
    healthy: bool | None


# Between actors -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebalanceTick:
    """From TimerActor: the rebalance timer fired."""


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """To TimerActor: fire one tick after ``delay_s``, replacing any pending one."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class PingCandidates:
    """To PingerActor: ping these, tell the answers back tagged with ``token``."""

    token: int
    candidates: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class PingResults:
    """From PingerActor: who answered (see ``proxy.choose_head`` for missing entries)."""

    token: int
    answered: Mapping[Address, bool]


@dataclass(frozen=True, slots=True)
class ActiveServerChanged:
    """To listeners: the active server changed, and why (docs/protocol.md section 5 reasons)."""

    server: Address | None
    reason: str
