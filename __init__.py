"""rpcproxy: client-side Nomad server selection, as a service.

This package is what a Python service imports to use a running proxy::

    from rpcproxy import ProxyClient

    with ProxyClient("tcp://127.0.0.1:4650") as client:
        server = client.find_server()

or, in an asyncio program, ``AsyncProxyClient`` (every op a coroutine). A
user's tests can run either client without a proxy: see :mod:`rpcproxy.testing`.

The service itself (``rpcproxy serve``) is built from the subpackages:
:mod:`rpcproxy.proxy` (the pure domain), :mod:`rpcproxy.actors` (the one
writer of its state) and :mod:`rpcproxy.bus` (its ZeroMQ transport, the
client library and the stand-ins used by demos and tests).
"""

from rpcproxy.bus import client as _client
from rpcproxy.bus.client import *  # noqa: F403 (the facade's __all__ is the one list)

__version__ = "0.2.0"

__all__ = ["__version__"]
__all__ += _client.__all__
