"""A client: ask the proxy which server to use, and report the ones that fail.

    python examples/client_lookup.py --proxy tcp://127.0.0.1:4650 --rounds 3

This is what a Nomad client does before each RPC. Here "using" a server is a
TCP connect with a short timeout; a real client sends its RPC instead.
"""

from __future__ import annotations

import argparse
import socket

from rpcproxy import ProxyClient, ProxyError


def use(addr: str, timeout_s: float) -> bool:
    """Stand-in for an RPC: can we open a TCP connection to the server?"""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="tcp://127.0.0.1:4650", help="query endpoint")
    parser.add_argument("--rounds", type=int, default=5, help="lookups to make")
    args = parser.parse_args()

    with ProxyClient(args.proxy, timeout_s=1.0, retries=3) as proxy:
        for _ in range(args.rounds):
            try:
                server = proxy.find_server()
            except ProxyError as exc:
                print(f"the proxy did not answer: {exc}")
                continue
            if server is None:
                print("no server known yet")
            elif use(server.addr, timeout_s=0.5):
                print(f"{server.addr}: ok")
            else:
                rotated = proxy.notify_failed_server(server.addr)
                print(f"{server.addr}: failed, reported (moved to the end: {rotated})")


if __name__ == "__main__":
    main()
