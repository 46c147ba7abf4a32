"""Discovery: finding servers by itself when heartbeats stop (docs/protocol.md section 10).

Sources (Consul's catalog, DNS) are asked from a part of ``serve`` of its
own, never from the actor's thread; what they find replaces the backups.
"""

from rpcproxy.bus.service.discovery.dns import DnsSource
from rpcproxy.bus.service.discovery.names import (
    DEFAULT_DNS_PORT,
    DnsName,
    Nameserver,
    parse_dns_name,
    parse_nameserver,
)
from rpcproxy.bus.service.discovery.source import DiscoveryError, DiscoverySource, SourceName

__all__ = [
    "DEFAULT_DNS_PORT",
    "DiscoveryError",
    "DiscoverySource",
    "DnsName",
    "DnsSource",
    "Nameserver",
    "SourceName",
    "parse_dns_name",
    "parse_nameserver",
]
