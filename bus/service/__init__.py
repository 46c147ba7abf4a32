"""The service's transport: every socket ``rpcproxy serve`` binds or connects.

Each socket belongs to one :class:`~rpcproxy.bus.net.loop.SocketThread`;
frames are validated by :mod:`~rpcproxy.bus.service.codec` before anything
reaches an actor (docs/protocol.md sections 1, 2, 4 and 5).
"""
