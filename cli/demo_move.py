"""The demo's last scene: every server moves and the heartbeats stop; Consul knows where to.

The heartbeat publisher dies and the servers it listed stop, while new
ones start on other ports and register in Consul. Nobody tells the proxy:
its rebalance timer fires, no server answers, it goes offline, asks Consul
(docs/protocol.md section 10), takes the servers found as its backups and,
being offline, rebalances onto one of them at once; the client follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypedDict

from rpcproxy.bus.service.discovery.part import LOOK_PERIOD_S
from rpcproxy.bus.standins.publisher import HeartbeatPublisher
from rpcproxy.cli.demo_cluster import MOVED, Cluster, Step

__all__ = ["DiscoverySettings", "discovery_settings", "move_steps"]

OPERATOR_REBALANCE_AT_S: Final = 32.0
"""When the scene before this one last restarts the rebalance timer (at speed 1)."""
MOVE_AT_S: Final = 35.0
CHECK_AT_S: Final = 43.0
"""Past the timer's latest rebalance (``OPERATOR_REBALANCE_AT_S`` + 1.5 x
``min_reuse_s``, 41 s) and the discovery and rebalance that follow it."""
MIN_REUSE_S: Final = 6.0
"""The demo's ``min_reuse_s`` at speed 1: the timer waits 6 to 9 s."""
CLIENT_WAIT_S: Final = 3.0
"""How long, in real seconds, the check waits for the client beyond its time.

Discovery looks at the proxy every LOOK_PERIOD_S whatever the speed, so a
fast demo may reach the check just before the client has moved."""


class DiscoverySettings(TypedDict):
    """The two keys of the demo proxy's configuration that time its discovery."""

    heartbeat_stale_s: float
    discover_interval_s: float


def discovery_settings(speed: float) -> DiscoverySettings:
    """``heartbeat_stale_s`` and ``discover_interval_s`` for the demo's proxy.

    ``discover_interval_s`` is short because the proxy already asked Consul at
    start (it knew no server before the first heartbeat): at the default
    minute between discoveries, the scene's would wait for that minute.

    ``heartbeat_stale_s`` is short enough that, once the heartbeats stop,
    discovery goes on by itself for the rest of the run (the status shows it),
    and long enough that the rebalance timer finds nobody first: the scene is
    about a proxy that goes offline and then asks. The timer fires at most
    1.5 x ``min_reuse_s`` after the operator's rebalance, 6 s (at speed 1)
    after the heartbeats stop; staleness comes 2 s later, plus a look of
    discovery's (real seconds at any speed), so the look that sees the proxy
    offline always comes first.
    """
    timer_after_move_s = OPERATOR_REBALANCE_AT_S + 1.5 * MIN_REUSE_S - MOVE_AT_S
    return DiscoverySettings(
        heartbeat_stale_s=(timer_after_move_s + 2.0) / speed + LOOK_PERIOD_S,
        discover_interval_s=2.0 / speed,
    )


def move_steps(
    cluster: Cluster,
    publisher: HeartbeatPublisher,
    say: Callable[[str], None],
    wait_client_on: Callable[[tuple[str, ...], float], str | None],
    speed: float,
) -> list[Step]:
    """The scene's two steps: the move, then a look at where the client ended up.

    Args:
        cluster: the demo's cluster (its Consul stand-in included).
        publisher: the heartbeat publisher, which dies in the move.
        say: prints a line of the demo.
        wait_client_on: waits up to the given real seconds for the demo's
            client to be using one of the named servers; the name, or None.
        speed: the demo's ``--speed``.
    """
    new = f"{MOVED[0]}-{MOVED[-1]}"

    def move() -> None:
        # The publisher first: no heartbeat may list the new servers, which
        # only Consul is to know.
        publisher.stop()
        cluster.move()
        say(
            f"script: every server moves: s1-s4 stop, {new} start elsewhere and join Consul;"
            " the heartbeats stop"
        )

    def check() -> None:
        using = wait_client_on(MOVED, CLIENT_WAIT_S)
        if using is None:
            say(f"script: the client is not on any of {new} yet")
        else:
            say(f"script: the client uses {using}, a server only Consul knew of")

    return [
        Step(MOVE_AT_S / speed, "every server moves; the heartbeats stop", move),
        Step(CHECK_AT_S / speed, "the proxy found the new servers through Consul", check),
    ]
