"""Stand-ins for the rest of a cluster, for demos, compose and tests.

A Nomad-server stand-in that answers pings and a heartbeat publisher. The
service never imports them; the CLI's demo and tool commands do.
"""
