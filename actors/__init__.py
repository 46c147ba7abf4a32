"""Pykka actors: the proxy's one writer, its timer and its prober.

ProxyActor runs the :class:`ProxyCore` that owns the state and starts
TimerActor and ProberActor as its children. Requests are the frozen messages
of :mod:`actors.messages` (all exported here, listed once in its
``__all__``); readers use the :class:`SnapshotBox` instead of the mailbox.
"""

from rpcproxy.actors import messages as _messages
from rpcproxy.actors.core import ProxyCore, ProxySettings
from rpcproxy.actors.inbox import SimpleInboxActor
from rpcproxy.actors.messages import *  # noqa: F403 (the vocabulary's __all__ is the one list)
from rpcproxy.actors.prober import Prober, ProberActor
from rpcproxy.actors.proxy_actor import ProxyActor
from rpcproxy.actors.snapshot import DiscoveryInfo, Snapshot, SnapshotBox
from rpcproxy.actors.timer import TimerActor

__all__ = [
    "DiscoveryInfo",
    "Prober",
    "ProberActor",
    "ProxyActor",
    "ProxyCore",
    "ProxySettings",
    "SimpleInboxActor",
    "Snapshot",
    "SnapshotBox",
    "TimerActor",
]
__all__ += _messages.__all__
