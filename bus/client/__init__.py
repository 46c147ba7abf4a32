"""The client library: what a Python service needs to use a running proxy.

It depends on the wire vocabulary only, never on the service's actors, so a
client process imports none of the service. Most users import its names from
the top-level package: ``from rpcproxy import ProxyClient``.
"""
