"""The wire vocabulary, defined once: what both ends of docs/protocol.md spell.

The service's transport (:mod:`rpcproxy.bus.service`), the client library
(:mod:`rpcproxy.bus.client`) and :mod:`rpcproxy.testing` import their op
names and shapes, error codes, topics, endpoints and event reasons from here,
so nothing can drift between them. :mod:`~rpcproxy.bus.wire.vocabulary`
holds the words, :mod:`~rpcproxy.bus.wire.ops` each op's request and reply;
each module's ``__all__`` is the one list of its names, exported here whole.
This package imports nothing of rpcproxy: a client process that imports it
loads none of the service.
"""

from rpcproxy.bus.wire import ops as _ops
from rpcproxy.bus.wire import vocabulary as _vocabulary
from rpcproxy.bus.wire.ops import *  # noqa: F403 (ops.__all__ is the one list)
from rpcproxy.bus.wire.vocabulary import *  # noqa: F403 (vocabulary.__all__ is the one list)

__all__ = []
__all__ += _ops.__all__
__all__ += _vocabulary.__all__
