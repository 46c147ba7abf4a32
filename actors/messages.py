"""The messages actors exchange: frozen values, checked before they get here.

Every request that expects an answer carries a ``reply`` callable, invoked
exactly once from the actor's thread after the new snapshot is published, so
the caller's reply can never show an older state than its own write
(read-your-writes). Callers that want a future pass ``future.set``; the query
server passes a function that queues the answer and wakes its poller.

Each request's ``reply`` is typed with what it is called with (``Reply[bool]``,
``Reply[AddOutcome | Refused]`` ...), so the type checker holds every sender
and every receiver of an answer to the same type: the query socket's encoder
of an op must accept exactly what the op's message is answered with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar, get_args

from rpcproxy.proxy import Address, Heartbeat

__all__ = [
    "CHANGE_REASONS",
    "HEARTBEAT_KINDS",
    "PROXY_MESSAGES",
    "REBALANCE_KINDS",
    "ActiveServerChanged",
    "AddOutcome",
    "AddPrimary",
    "ApplyDiscovery",
    "ApplyHeartbeat",
    "ApplyHeartbeats",
    "ChangeReason",
    "HeartbeatKind",
    "HeartbeatResult",
    "NotifyFailed",
    "NotifyOutcome",
    "ProbeCandidates",
    "ProbeResults",
    "ProxyMessage",
    "ProxyRequest",
    "Rebalance",
    "RebalanceKind",
    "RebalanceOutcome",
    "RebalanceTick",
    "RefusalKind",
    "Refused",
    "RemoveServer",
    "Reply",
    "ResetRebalanceTimer",
    "ScheduleTick",
    "SetBackups",
    "SetServers",
    "SetServersOutcome",
    "no_reply",
]
"""The actors' vocabulary; :mod:`rpcproxy.actors` exports all of it."""

R = TypeVar("R")

Reply: TypeAlias = Callable[[R], None]
"""Called once, on the actor's thread, with the request's result (``Reply[R]``)."""


def no_reply(_: object) -> None:
    """The reply of fire-and-forget messages, such as heartbeats from the SUB socket."""


# Vocabularies ---------------------------------------------------------------
#
# Literal types, like Mopidy's event names: a misspelt reason or result is a
# type error where it is written, not a metrics series or event nobody reads.

ChangeReason: TypeAlias = Literal["rebalance", "failed", "heartbeat", "added", "removed", "backup"]
"""Why ProxyActor changed its state: the reasons of docs/protocol.md section 5.

``rebalance``: a rebalance reordered the list; ``failed``: notify_failed_server;
``heartbeat``: one heartbeat or one batch of them; ``added``: add_primary_server,
or the servers configured or restored at start; ``removed``: remove_server;
``backup``: set_backup_servers. The wire's reasons (``bus.wire.ChangeReason``)
are these and ``refresh``, which the events publisher sends on its own and no
state change ever causes. The two are separate definitions because actors may
not import the transport nor the client library the actors (the layers), and
``proxy`` knows nothing of why a change happened; ``bus/service/events.py``,
which sees both, makes the type checker hold this one inside the wire's.
"""

RebalanceKind: TypeAlias = Literal["moved", "kept", "none_answered", "abandoned", "skipped"]
"""How a rebalance ended (the ``result`` label of ``rpcproxy_rebalances``).

``moved``: a new head; ``kept``: the same head answered first; ``none_answered``:
nobody answered, the list is kept; ``abandoned``: the chosen head was removed
while pinging; ``skipped``: fewer than two servers, nothing was probed.
"""

HeartbeatKind: TypeAlias = Literal["applied", "stale"]
"""What ProxyActor did with a heartbeat (the ``result`` label of ``rpcproxy_heartbeats``).

``stale``: its publisher's seq was not newer than one already applied. The
transport counts a third result under the same label, ``superseded`` (replaced
by a newer one of its publisher before it reached this actor).
"""

CHANGE_REASONS: tuple[ChangeReason, ...] = get_args(ChangeReason)
REBALANCE_KINDS: tuple[RebalanceKind, ...] = get_args(RebalanceKind)
HEARTBEAT_KINDS: tuple[HeartbeatKind, ...] = get_args(HeartbeatKind)


# Results --------------------------------------------------------------------
#
# Named ...Outcome: the client library's AddResult and RebalanceResult are
# public API (``from rpcproxy import AddResult``) and mean the decoded reply.


@dataclass(frozen=True, slots=True)
class AddOutcome:
    """What :class:`AddPrimary` did: ``added`` is False when it was a member already."""

    server: Address
    added: bool


@dataclass(frozen=True, slots=True)
class NotifyOutcome:
    """What :class:`NotifyFailed` did: whether it rotated, and the active server after it."""

    rotated: bool
    server: Address | None


RefusalKind: TypeAlias = Literal["bad_request", "unavailable"]
"""Why a write was refused: bad input (a bound), or nothing to act on now."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The result of a write that changed nothing: refused as bad input (a
    bound, docs/protocol.md section 8) or, for ``set_servers``, because no
    server answered. The query socket answers with ``kind`` as the error code
    and ``reason`` as its message.
    """

    reason: str
    kind: RefusalKind = "bad_request"


@dataclass(frozen=True, slots=True)
class SetServersOutcome:
    """What :class:`SetServers` did: the new primaries, and those left out for not answering."""

    servers: tuple[Address, ...]
    dropped: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    changed: bool
    stale: bool


@dataclass(frozen=True, slots=True)
class RebalanceOutcome:
    """``healthy`` is None when fewer than two servers meant nothing was probed."""

    server: Address | None
    healthy: bool | None


# Requests to ProxyActor ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifyFailed:
    """Answered whether the failed server was the head and so moved to the end."""

    addr: Address
    reply: Reply[NotifyOutcome] = no_reply


@dataclass(frozen=True, slots=True)
class AddPrimary:
    addr: Address
    reply: Reply[AddOutcome | Refused] = no_reply


@dataclass(frozen=True, slots=True)
class SetBackups:
    """Answered the backup list as it now is, or :class:`Refused` beyond max_servers."""

    addrs: tuple[Address, ...]
    reply: Reply[tuple[Address, ...] | Refused] = no_reply


@dataclass(frozen=True, slots=True)
class SetServers:
    """Replace the primaries with those of ``addrs`` that answer a probe (all, with ``force``).

    Answered a :class:`SetServersOutcome`, or :class:`Refused` when none
    answered (``unavailable``) or beyond max_servers (``bad_request``).
    """

    addrs: tuple[Address, ...]
    force: bool = False
    reply: Reply[SetServersOutcome | Refused] = no_reply


@dataclass(frozen=True, slots=True)
class ApplyDiscovery:
    """Servers a discovery found (docs/protocol.md section 10): they replace the backups.

    Never empty (a discovery that finds nobody changes nothing, and is not
    sent). Answered whether the backups changed; when they did while the
    proxy is offline or has no primaries, a rebalance starts at once.
    """

    source: str
    addrs: tuple[Address, ...]
    reply: Reply[bool] = no_reply


@dataclass(frozen=True, slots=True)
class RemoveServer:
    """Answered whether the server was a member (of either list)."""

    addr: Address
    reply: Reply[bool] = no_reply


@dataclass(frozen=True, slots=True)
class ApplyHeartbeat:
    heartbeat: Heartbeat
    reply: Reply[HeartbeatResult] = no_reply


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
    reply: Reply[RebalanceOutcome] = no_reply


@dataclass(frozen=True, slots=True)
class ResetRebalanceTimer:
    """Answered the seconds until the rebalance it scheduled."""

    reply: Reply[float] = no_reply


# Between actors -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebalanceTick:
    """From TimerActor: the rebalance timer fired."""


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """To TimerActor: fire one tick after ``delay_s``, replacing any pending one."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class ProbeCandidates:
    """To ProberActor: probe these, tell the answers back tagged with ``token``.

    A rebalance needs only the first candidate in order that answers; with
    ``every``, each candidate's answer is wanted (``set_servers``).
    """

    token: int
    candidates: tuple[Address, ...]
    every: bool = False


@dataclass(frozen=True, slots=True)
class ProbeResults:
    """From ProberActor: who answered (see ``proxy.choose_head`` for missing entries)."""

    token: int
    answered: Mapping[Address, bool]


@dataclass(frozen=True, slots=True)
class ActiveServerChanged:
    """To listeners: the active server changed, and why (docs/protocol.md section 5 reasons)."""

    server: Address | None
    reason: ChangeReason
    epoch: int
    """The change's number within this run: one more than the previous event's."""


ProxyRequest: TypeAlias = (
    NotifyFailed
    | AddPrimary
    | SetBackups
    | SetServers
    | ApplyDiscovery
    | RemoveServer
    | ApplyHeartbeat
    | ApplyHeartbeats
    | Rebalance
    | ResetRebalanceTimer
)
"""What other threads tell ProxyActor (its children tell it RebalanceTick and ProbeResults)."""

ProxyMessage: TypeAlias = ProxyRequest | RebalanceTick | ProbeResults
"""Every message ProxyActor handles: its dispatch has one case per member, and no other."""

PROXY_MESSAGES: tuple[type[ProxyMessage], ...] = get_args(ProxyMessage)
"""The members of :data:`ProxyMessage`, for the runtime check of what pykka hands over."""
