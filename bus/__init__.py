"""ZeroMQ and MessagePack, by audience.

- :mod:`rpcproxy.bus.service`: the service's transport (query ROUTER,
  heartbeat SUB, events PUB, server pings), used by ``rpcproxy serve``;
- :mod:`rpcproxy.bus.client`: the client library other services import;
- :mod:`rpcproxy.bus.standins`: a Nomad-server stand-in and a heartbeat
  publisher, for demos and tests (the service never imports them).
"""
