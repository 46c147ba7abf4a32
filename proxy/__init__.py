"""The domain of rpcproxy: pure functions and immutable values.

No threads, sockets, clocks or randomness of its own: a ``random.Random`` and
the time are passed in, so every rule of docs/protocol.md sections 2 and 3 can be
tested in microseconds and simulated for whole fleets.
"""

from rpcproxy.proxy.address import DEFAULT_PORT, Address, InvalidAddressError, parse_address
from rpcproxy.proxy.heartbeat import (
    Heartbeat,
    HeartbeatOutcome,
    HeartbeatServer,
    LocalIdentity,
    apply_heartbeat,
)
from rpcproxy.proxy.interval import RebalanceTiming
from rpcproxy.proxy.rebalance import (
    RebalancePlan,
    ReconcileOutcome,
    choose_head,
    plan_rebalance,
    reconcile,
)
from rpcproxy.proxy.state import (
    DEFAULT_MAX_SERVERS,
    ProxyState,
    TooManyServersError,
    add_primary,
    check_invariant,
    list_changes,
    members_of,
    notify_failed,
    remove_server,
    set_backups,
    set_primaries,
)
from rpcproxy.proxy.throttle import Throttle

__all__ = [
    "DEFAULT_MAX_SERVERS",
    "DEFAULT_PORT",
    "Address",
    "Heartbeat",
    "HeartbeatOutcome",
    "HeartbeatServer",
    "InvalidAddressError",
    "LocalIdentity",
    "ProxyState",
    "RebalancePlan",
    "RebalanceTiming",
    "ReconcileOutcome",
    "Throttle",
    "TooManyServersError",
    "add_primary",
    "apply_heartbeat",
    "check_invariant",
    "choose_head",
    "list_changes",
    "members_of",
    "notify_failed",
    "parse_address",
    "plan_rebalance",
    "reconcile",
    "remove_server",
    "set_backups",
    "set_primaries",
]
