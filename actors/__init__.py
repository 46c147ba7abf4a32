"""Pykka actors: the proxy's one writer, its timer and its prober.

ProxyActor owns the state and starts TimerActor and ProberActor as its
children. Requests are the frozen messages of :mod:`actors.messages`; readers
use the :class:`SnapshotBox` instead of the mailbox.
"""

from rpcproxy.actors.messages import (
    PROXY_MESSAGES,
    ActiveServerChanged,
    AddOutcome,
    AddPrimary,
    ApplyHeartbeat,
    ApplyHeartbeats,
    ChangeReason,
    HeartbeatKind,
    HeartbeatResult,
    NotifyFailed,
    NotifyOutcome,
    ProxyMessage,
    ProxyRequest,
    Rebalance,
    RebalanceKind,
    RebalanceOutcome,
    Refused,
    RemoveServer,
    Reply,
    ResetRebalanceTimer,
    SetBackups,
)
from rpcproxy.actors.prober import Prober, ProberActor
from rpcproxy.actors.proxy_actor import ProxyActor, ProxySettings
from rpcproxy.actors.snapshot import Snapshot, SnapshotBox
from rpcproxy.actors.timer import TimerActor

__all__ = [
    "PROXY_MESSAGES",
    "ActiveServerChanged",
    "AddOutcome",
    "AddPrimary",
    "ApplyHeartbeat",
    "ApplyHeartbeats",
    "ChangeReason",
    "HeartbeatKind",
    "HeartbeatResult",
    "NotifyFailed",
    "NotifyOutcome",
    "Prober",
    "ProberActor",
    "ProxyActor",
    "ProxyMessage",
    "ProxyRequest",
    "ProxySettings",
    "Rebalance",
    "RebalanceKind",
    "RebalanceOutcome",
    "Refused",
    "RemoveServer",
    "Reply",
    "ResetRebalanceTimer",
    "SetBackups",
    "Snapshot",
    "SnapshotBox",
    "TimerActor",
]
