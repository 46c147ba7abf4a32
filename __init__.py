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

from rpcproxy.bus.client.aio import AsyncProxyClient
from rpcproxy.bus.client.client import (
    DEFAULT_ENDPOINT,
    AddResult,
    BadRequestError,
    HeartbeatEntry,
    ProtocolError,
    ProxyClient,
    ProxyError,
    ProxyInvalidAddressError,
    ProxyTimeoutError,
    Publisher,
    RebalanceResult,
    Server,
    Status,
    UnavailableError,
    UnknownOpError,
    UnsupportedVersionError,
)
from rpcproxy.bus.client.keys import CurveClient, CurveError
from rpcproxy.bus.client.transport import AsyncTransport, Transport

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_ENDPOINT",
    "AddResult",
    "AsyncProxyClient",
    "AsyncTransport",
    "BadRequestError",
    "CurveClient",
    "CurveError",
    "HeartbeatEntry",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ProxyInvalidAddressError",
    "ProxyTimeoutError",
    "Publisher",
    "RebalanceResult",
    "Server",
    "Status",
    "Transport",
    "UnavailableError",
    "UnknownOpError",
    "UnsupportedVersionError",
    "__version__",
]
