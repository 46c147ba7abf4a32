"""Stand-ins for the rest of a cluster, for demos, compose and tests.

A Nomad-server stand-in that answers pings, a heartbeat publisher, and a
Consul agent's catalog over HTTP (the two reads discovery makes). None of
them is the product: the service never imports them; the CLI's demo and
tool commands do.
"""
