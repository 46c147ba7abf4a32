"""Neutral ground every wing of ``bus`` stands on: the service, the probes,
the client and the stand-ins.

- :mod:`~rpcproxy.bus.net.loop`: a socket owned by one thread
  (:class:`~rpcproxy.bus.net.loop.SocketThread`) and its :class:`~rpcproxy.bus.net.loop.Waker`;
- :mod:`~rpcproxy.bus.net.keys`: CURVE key files, read the same way by both ends;
- :mod:`~rpcproxy.bus.net.resolve`: bounded, cached name resolution.

This module imports nothing, so a client that loads ``keys`` loads none of
the others (the client library must not load the domain ``resolve`` uses).
"""
