"""The client library: what a Python service needs to use a running proxy.

This module is its one public surface; the modules beside it are private
(their names start with ``_``) and may change between releases. Most users
import these names from the top-level package: ``from rpcproxy import
ProxyClient``. The library depends on the wire vocabulary and the CURVE key
files only, never on the service, so a client process imports none of it.

The public classes and functions say they are ``rpcproxy``'s (their
``__module__``), as httpx's do, so a repr or a traceback shows the name a user
imports (``rpcproxy.ProxyTimeoutError``), not where it happens to be written.
"""

from rpcproxy.bus.client._aio import AsyncProxyClient
from rpcproxy.bus.client._client import DEFAULT_ENDPOINT, ProxyClient
from rpcproxy.bus.client._results import (
    AddResult,
    BadRequestError,
    NoServerError,
    ProtocolError,
    ProxyError,
    ProxyInvalidAddressError,
    ProxyTimeoutError,
    RebalanceResult,
    SetServersResult,
    UnavailableError,
    UnknownOpError,
    UnsupportedVersionError,
)
from rpcproxy.bus.client._transport import AsyncTransport, Transport
from rpcproxy.bus.net.keys import CurveClient, CurveError
from rpcproxy.bus.wire import Discovery, HeartbeatEntry, Publisher, Server, Status

__all__ = [
    "DEFAULT_ENDPOINT",
    "AddResult",
    "AsyncProxyClient",
    "AsyncTransport",
    "BadRequestError",
    "CurveClient",
    "CurveError",
    "Discovery",
    "HeartbeatEntry",
    "NoServerError",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ProxyInvalidAddressError",
    "ProxyTimeoutError",
    "Publisher",
    "RebalanceResult",
    "Server",
    "SetServersResult",
    "Status",
    "Transport",
    "UnavailableError",
    "UnknownOpError",
    "UnsupportedVersionError",
]


def _name_as_imported() -> None:
    for name in __all__:
        public = globals()[name]
        if isinstance(public, type):
            public.__module__ = "rpcproxy"


_name_as_imported()
