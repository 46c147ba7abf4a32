"""Outbound probes: how a rebalance checks that candidate servers answer.

- :mod:`~rpcproxy.bus.probes.engine`: the windowed engine that probes many
  servers at once under one deadline, and its tcp and zmq checks;
- :mod:`~rpcproxy.bus.probes.nomad`: Nomad's own ``Status.Ping`` over
  msgpack-rpc, with its TLS;
- :mod:`~rpcproxy.bus.probes.msgpackrpc`: the framing of Nomad's msgpack-rpc.

The service's sockets never import this package, nor it theirs: ``cli``
builds a prober from here and hands it to the actors.
"""

from rpcproxy.bus.probes.engine import TcpProber, WindowedProber, ZmqProber
from rpcproxy.bus.probes.nomad import NomadProber, NomadTls, TlsSetupError, load_tls

__all__ = [
    "NomadProber",
    "NomadTls",
    "TcpProber",
    "TlsSetupError",
    "WindowedProber",
    "ZmqProber",
    "load_tls",
]
