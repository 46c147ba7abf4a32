"""The demo's cluster on loopback: Nomad-server stand-ins and the Consul agent that lists them.

What the heartbeat publisher lists is kept here too, so a scene can drain a
server from it; what Consul lists is always the servers that are running,
as the servers' own registrations would make it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Final

import zmq

from rpcproxy.bus.standins.consul import ConsulCatalog, ConsulStandIn, health_entry
from rpcproxy.bus.standins.standin import ServerStandIn
from rpcproxy.proxy import HeartbeatServer, parse_address

__all__ = ["FIRST", "LOCAL", "MOVED", "Cluster", "Step"]

LOCAL: Final = "tcp://127.0.0.1:*"
FIRST: Final = ("s1", "s2", "s3", "s4")
"""The servers the demo starts with."""
MOVED: Final = ("s5", "s6", "s7")
"""The servers that replace them all when the cluster moves (docs: README "rpcproxy demo")."""
_DATACENTER: Final = {"s4": "dc2"}
"""Each server not named here is in dc1, the proxy's own."""
_DATACENTERS: Final = ("dc1", "dc2")
"""As Consul lists them: the agent's own (the proxy's) first."""


@dataclasses.dataclass
class Step:
    """One step of the demo's script: at ``at_s`` seconds, run ``action``."""

    at_s: float
    text: str
    action: Callable[[], None]


class Cluster:
    """The stand-ins, what the heartbeat currently lists, and the Consul stand-in.

    Attributes:
        servers: every stand-in by name, stopped ones too (so their
            addresses keep their names in what the demo prints).
        consul: the Consul agent stand-in; ``consul.url`` is the proxy's ``consul_addr``.
    """

    def __init__(self, context: zmq.Context[Any]) -> None:
        self._context = context
        self.servers: dict[str, ServerStandIn] = {}
        self._start(FIRST)
        self.listed = set(FIRST)
        self._lock = threading.Lock()
        self.consul = ConsulStandIn(ConsulCatalog(_DATACENTERS, self._registrations()))
        self.consul.start()

    def _start(self, names: tuple[str, ...]) -> None:
        for name in names:
            standin = ServerStandIn(LOCAL, context=self._context)
            standin.start()
            self.servers[name] = standin

    def _registrations(self) -> dict[str, list[Any]]:
        """Consul's entries: each running server in its datacenter, passing its checks."""
        entries: dict[str, list[Any]] = {dc: [] for dc in _DATACENTERS}
        for name, standin in self.servers.items():
            if standin.running:
                addr = parse_address(standin.address)
                entries[_DATACENTER.get(name, "dc1")].append(
                    health_entry(addr.host, addr.port, node=name, node_addr=addr.host)
                )
        return entries

    def name_of(self, addr: str | None) -> str:
        for name, standin in self.servers.items():
            if standin.address == addr:
                return name
        return addr or "-"

    def label(self, addr: str) -> str:
        """``s1 (127.0.0.1:4711)``: the name the script uses, then the address."""
        name = self.name_of(addr)
        return addr if name == addr else f"{name} ({addr})"

    def heartbeat_servers(self) -> tuple[HeartbeatServer, ...]:
        with self._lock:
            listed = sorted(self.listed)
        return tuple(
            HeartbeatServer(self.servers[n].address, 1, 1, _DATACENTER.get(n, "dc1"))
            for n in listed
        )

    def set_listed(self, name: str, listed: bool) -> None:
        with self._lock:
            (self.listed.add if listed else self.listed.discard)(name)

    def move(self) -> None:
        """Every server moves: :data:`MOVED` start, register in Consul, and the others stop.

        The new ones start before the old ones stop, so no new server can be
        given a port an old one just let go (its name would then be the old one's).
        """
        old = [standin for standin in self.servers.values() if standin.running]
        self._start(MOVED)
        with self._lock:
            self.listed = set(MOVED)
        for standin in old:
            standin.stop()
        self.consul.catalog.update(self._registrations())

    def stop(self) -> None:
        for standin in self.servers.values():
            if standin.running:
                standin.stop()
        self.consul.stop()
