"""An asyncio service that looks up its Nomad server before each call.

    python examples/asyncio_service.py --proxy tcp://127.0.0.1:4650 \\
        --events tcp://127.0.0.1:4652 --calls 20 --concurrency 4

Many coroutines share one watching :class:`~rpcproxy.AsyncProxyClient`:
each hands its RPC to ``await proxy.call(...)``, which looks the server up
in the view the client keeps by following the proxy's events (no round
trip), and on a connection error or timeout reports that server and tries
the next one, within a hold, as Nomad's own client does. Here a "call"
opens a TCP connection to the server, sends one line and reads one line back
(an echo); a real service sends its RPC instead.

Prints one line per call (``<n> <server> ok`` or ``<n> failed: <reason>``)
and exits 0 once every call is done.
"""

from __future__ import annotations

import argparse
import asyncio

from rpcproxy import AsyncProxyClient, ProxyError, Server

CALL_TIMEOUT_S = 0.5
HOLD_S = 2.0


async def call_server(addr: str, payload: bytes) -> bytes:
    """Stand-in for an RPC: send one line, read one line back."""
    host, _, port = addr.rpartition(":")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host.strip("[]"), int(port)), CALL_TIMEOUT_S
    )
    try:
        writer.write(payload + b"\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), CALL_TIMEOUT_S)
    finally:
        writer.close()
        await writer.wait_closed()
    if reply.strip() != payload:
        raise ConnectionError(f"{addr} answered {reply[:40]!r}")
    return reply


async def one_call(proxy: AsyncProxyClient, n: int) -> str:
    """One RPC through ``proxy.call``: failed servers are reported and the next one tried."""

    async def rpc(server: Server) -> str:
        await call_server(server.addr, f"call {n}".encode())
        return server.addr

    try:
        # TimeoutError and connection errors are OSErrors: retried on the next server.
        addr = await proxy.call(rpc, hold_s=HOLD_S)
    except OSError as exc:
        return f"{n} failed: {exc}"
    return f"{n} {addr} ok"


async def run(proxy_endpoint: str, events: str, calls: int, concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)
    async with AsyncProxyClient(proxy_endpoint, events=events, watch=True, timeout_s=1.0) as proxy:

        async def bounded(n: int) -> str:
            async with limit:
                try:
                    return await one_call(proxy, n)
                except ProxyError as exc:
                    return f"{n} failed: the proxy did not answer ({exc})"

        for line in await asyncio.gather(*(bounded(n) for n in range(1, calls + 1))):
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="tcp://127.0.0.1:4650", help="query endpoint")
    parser.add_argument("--events", default="tcp://127.0.0.1:4652", help="events endpoint")
    parser.add_argument("--calls", type=int, default=10, help="calls to make")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight at once")
    args = parser.parse_args()
    asyncio.run(run(args.proxy, args.events, args.calls, args.concurrency))


if __name__ == "__main__":
    main()
