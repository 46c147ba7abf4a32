"""Discovery: finding servers by itself when heartbeats stop (docs/protocol.md section 10).

Sources (Consul's catalog, DNS) are asked from a part of ``serve`` of its
own, never from the actor's thread; what they find replaces the backups.

This facade holds what the configuration and the metrics need (names,
results, the source protocol). The sources themselves
(:mod:`~rpcproxy.bus.service.discovery.consul`,
:mod:`~rpcproxy.bus.service.discovery.dns`) and the part
(:mod:`~rpcproxy.bus.service.discovery.part`) are imported where ``serve``
builds them, so reading a configuration loads no HTTP or DNS client.
"""

from rpcproxy.bus.service.discovery.names import (
    DEFAULT_DNS_PORT,
    DnsName,
    Nameserver,
    parse_dns_name,
    parse_nameserver,
)
from rpcproxy.bus.service.discovery.source import (
    DISCOVERY_RESULTS,
    SOURCE_NAMES,
    DiscoveryError,
    DiscoveryResult,
    DiscoverySource,
    SourceName,
)

__all__ = [
    "DEFAULT_DNS_PORT",
    "DISCOVERY_RESULTS",
    "SOURCE_NAMES",
    "DiscoveryError",
    "DiscoveryResult",
    "DiscoverySource",
    "DnsName",
    "Nameserver",
    "SourceName",
    "parse_dns_name",
    "parse_nameserver",
]
