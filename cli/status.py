"""``rpcproxy status``: the active list as a table, shared with the demo's live view."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable

from rpcproxy.bus.client import ProxyClient, ProxyError, Status
from rpcproxy.bus.net.keys import CurveClient

CLEAR = "\x1b[H\x1b[2J"
"""Cursor home and clear screen: redraw a live view in place."""


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
    lines.append(_heartbeat_line(status))
    if status.offline:
        # Reported, not acted on: queries still go to the head above.
        lines.append("offline: yes (no server answered the last rebalance's pings)")
    else:
        lines.append("offline: no")
    if status.discovery is not None:
        found = status.discovery
        lines.append(
            f"discovery: {found.found} servers from {found.source}, "
            f"{format_duration(found.age_s)} ago"
        )
    return "\n".join(lines)


def _heartbeat_line(status: Status) -> str:
    if status.heartbeat_age_s is None:
        return "heartbeats: none yet"
    publishers = ", ".join(
        f"{p.publisher} seq {p.seq}"
        + (f" ({format_duration(p.age_s)} ago)" if p.age_s is not None else "")
        for p in status.publishers
    )
    last = f"heartbeats: last {format_duration(status.heartbeat_age_s)} ago"
    return f"{last}; publishers: {publishers}" if publishers else last


def run_status(
    endpoint: str,
    *,
    timeout_s: float,
    as_json: bool,
    curve: CurveClient | None = None,
    watch_s: float | None = None,
) -> int:
    """Print the status of the proxy at ``endpoint``; 1 if it does not answer.

    With ``watch_s``, redraw it every ``watch_s`` seconds until Ctrl-C (a
    proxy that stops answering is shown as such, not fatal).
    """
    with ProxyClient(endpoint, timeout_s=timeout_s, retries=1, curve=curve) as client:
        if watch_s is None:
            try:
                status = client.status()
            except ProxyError as exc:
                print(f"rpcproxy status: {endpoint}: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(dataclasses.asdict(status)) if as_json else render_status(status))
            return 0
        return _watch(client, endpoint, watch_s, as_json)


def _watch(client: ProxyClient, endpoint: str, period_s: float, as_json: bool) -> int:
    stop = threading.Event()
    try:
        while True:
            try:
                status = client.status()
                text = json.dumps(dataclasses.asdict(status)) if as_json else render_status(status)
            except ProxyError as exc:
                text = f"{endpoint}: {exc}"
            if as_json:
                print(text, flush=True)  # One JSON object per line, for pipes.
            else:
                stamp = time.strftime("%H:%M:%S")
                sys.stdout.write(f"{CLEAR}rpcproxy status {endpoint}   {stamp}\n\n{text}\n")
                sys.stdout.flush()
            stop.wait(period_s)
    except KeyboardInterrupt:
        return 0
