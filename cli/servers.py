"""``rpcproxy servers``: the active list, and an operator's ``servers set`` (section 6)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rpcproxy.bus.client import CurveClient, ProxyClient, ProxyError
from rpcproxy.bus.wire import DEFAULT_QUERY_ENDPOINT

SET_TIMEOUT_S = 10.0
"""How long ``servers set`` waits: the proxy probes every address first."""


def add_servers_parser(commands: Any, add_curve: Any) -> None:
    """``servers [--query E]`` and ``servers set ADDR... [--force]``.

    The endpoint options are accepted before and after ``set``; given after,
    they win (``SUPPRESS`` keeps the subcommand from resetting them).
    """
    servers = commands.add_parser("servers", help="print the active list, or replace the primaries")
    _add_endpoint_arguments(servers, add_curve, timeout_s=2.0)
    actions = servers.add_subparsers(dest="servers_command", metavar="ACTION")
    set_ = actions.add_parser(
        "set",
        help="replace the primaries with the addresses that answer a probe (set_servers)",
    )
    set_.add_argument("addrs", nargs="+", metavar="ADDR", help="host[:port] of a Nomad server")
    set_.add_argument(
        "--force", action="store_true", help="keep every address, without probing them"
    )
    _add_endpoint_arguments(set_, add_curve, timeout_s=None)


def _add_endpoint_arguments(
    parser: argparse.ArgumentParser, add_curve: Any, *, timeout_s: float | None
) -> None:
    inherit = timeout_s is None
    parser.add_argument(
        "--query",
        default=argparse.SUPPRESS if inherit else DEFAULT_QUERY_ENDPOINT,
        help="the proxy's query endpoint",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS if inherit else None,
        help=f"seconds to wait for it (default {timeout_s or 2.0:g}; {SET_TIMEOUT_S:g} for set)",
    )
    if not inherit:
        add_curve(parser)


def run_servers(args: argparse.Namespace, curve: CurveClient | None) -> int:
    if args.servers_command == "set":
        timeout_s = args.timeout if args.timeout is not None else SET_TIMEOUT_S
        return set_servers(
            args.query, args.addrs, force=args.force, timeout_s=timeout_s, curve=curve
        )
    timeout_s = args.timeout if args.timeout is not None else 2.0
    return print_servers(args.query, timeout_s=timeout_s, curve=curve)


def print_servers(endpoint: str, *, timeout_s: float, curve: CurveClient | None = None) -> int:
    """Print the active list, active server first, one address a line; 1 if no answer."""
    with ProxyClient(endpoint, timeout_s=timeout_s, retries=1, curve=curve) as client:
        try:
            servers = client.servers()
        except ProxyError as exc:
            print(f"rpcproxy servers: {endpoint}: {exc}", file=sys.stderr)
            return 1
    for server in servers:
        print(server.addr)
    return 0


def set_servers(
    endpoint: str,
    addrs: Sequence[str],
    *,
    force: bool,
    timeout_s: float,
    curve: CurveClient | None = None,
) -> int:
    """Send ``set_servers``; print each server kept and dropped; 1 when refused."""
    with ProxyClient(endpoint, timeout_s=timeout_s, retries=1, curve=curve) as client:
        try:
            result = client.set_servers(addrs, force=force)
        except ProxyError as exc:
            print(f"rpcproxy servers set: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
    for server in result.servers:
        print(f"kept     {server.addr}")
    for server in result.dropped:
        print(f"dropped  {server.addr}  (did not answer)")
    return 0
