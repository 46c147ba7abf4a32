"""Stand-ins for the rest of a cluster, for demos, compose and tests.

A Nomad-server stand-in that answers pings, a heartbeat publisher, and a
Consul agent's catalog over HTTP (the two reads discovery makes). None of
them is the product: the service never imports them; the CLI's demo and
tool commands do.
"""

from typing import Final, Literal

__all__ = ["PROTOCOLS", "Protocol"]

Protocol = Literal["nomad", "zmq"]
"""What a server stand-in answers: Nomad's ``Status.Ping`` or the zmq ping."""

PROTOCOLS: Final[tuple[Protocol, ...]] = ("nomad", "zmq")
"""Here, not in :mod:`.standin`, so the CLI can offer them without loading a stand-in (and ssl)."""
