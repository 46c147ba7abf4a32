"""What Linux's /proc says about a process's memory and a port's TCP connections.

Shared by the integration tests and bench/ (which imports ``tests.*``; the
tests never import bench/), so both read the figures the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def vm_rss_kib(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def vm_rss_mib(pid: int) -> float:
    return vm_rss_kib(pid) / 1024


@dataclass(frozen=True)
class Connections:
    """Established TCP connections and what their send queues hold."""

    count: int
    send_queue_bytes: int


def connections_to(port: int) -> Connections:
    """Established TCP connections whose local port is ``port``, from ``/proc/net/tcp``.

    IPv4 only. Of a server's connections only its own ends have the
    listening port as their local port. The send queue is what the kernel
    holds for the peers (socket memory, not RSS, but charged to the server's
    memory cgroup all the same).
    """
    count = queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
            queued += int(queues.split(":")[0], 16)
    return Connections(count, queued)
