"""``rpcproxy status``: the active list as a table, shared with the demo's live view."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable

from bus.client import ProxyClient, ProxyError, Status
from bus.curve import CurveClient


def format_duration(seconds: float) -> str:
    """``9m 59s`` style, for humans reading a timer."""
    if seconds == float("inf"):
        return "never"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s"


def render_status(status: Status, label: Callable[[str], str] = str) -> str:
    """The active list with each server's role, the head marked, then the totals.

    ``label`` turns an address into what is shown (the demo adds server names).
    """
    primaries = {s.addr for s in status.primary}
    backups = {s.addr for s in status.backup}
    rows = [("", "#", "server", "role")]
    for index, server in enumerate(status.servers):
        roles = [
            r for r, group in (("primary", primaries), ("backup", backups)) if server.addr in group
        ]
        marker = "->" if index == 0 else ""
        rows.append((marker, str(index + 1), label(server.addr), "+".join(roles) or "?"))
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if not status.servers:
        lines.append("   (no servers known)")
    lines.append("")
    lines.append(
        f"active: {label(status.servers[0].addr) if status.servers else '-'}   "
        f"leader: {label(status.leader_addr) if status.leader_addr else '-'}   "
        f"nodes: {status.num_nodes}   "
        f"servers: {status.num_servers}   "
        f"next rebalance in {format_duration(status.next_rebalance_s)}"
    )
    return "\n".join(lines)


def run_status(
    endpoint: str, *, timeout_s: float, as_json: bool, curve: CurveClient | None = None
) -> int:
    """Print the status of the proxy at ``endpoint``; 1 if it does not answer."""
    try:
        with ProxyClient(endpoint, timeout_s=timeout_s, retries=1, curve=curve) as client:
            status = client.status()
    except ProxyError as exc:
        print(f"rpcproxy status: {endpoint}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(dataclasses.asdict(status), indent=2))
    else:
        print(render_status(status))
    return 0
