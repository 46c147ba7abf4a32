"""Client processes for bench/watch.py; each prints one JSON object on stdout.

Usage::

    python bench/watch_worker.py lookups QUERY EVENTS ROUNDS DURATION
    python bench/watch_worker.py watcher QUERY EVENTS        # until stdin closes
    python bench/watch_worker.py notifier QUERY COUNT PAUSE_S
    python bench/watch_worker.py async QUERY COROUTINES DURATION
    python bench/watch_worker.py threads QUERY THREADS DURATION

Times are ``time.monotonic_ns()``: CLOCK_MONOTONIC is one clock for the whole
system on Linux, so the watcher's and the notifier's times compare directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from typing import Any

from rpcproxy import AsyncProxyClient, ProxyClient


def lookups(query: str, events: str, rounds: int, duration_s: float) -> dict[str, Any]:
    """Watched and request find_server() from this one process, alternating rounds."""
    watched = ProxyClient(query, events=events, watch=True)
    asking = ProxyClient(query)
    out: dict[str, list[float]] = {"watched": [], "request": []}
    try:
        while watched.watch_stats() is None or watched.watch_stats().resyncs < 1:  # type: ignore[union-attr]
            time.sleep(0.01)
        for index in range(rounds):
            sides = [("watched", watched), ("request", asking)]
            for name, client in sides if index % 2 == 0 else sides[::-1]:
                find = client.find_server
                count = 0
                begin = time.perf_counter()
                stop = begin + duration_s
                while True:
                    # Checked every 256 calls: the clock would cost as much as a watched lookup.
                    for _ in range(256):
                        find()
                    count += 256
                    now = time.perf_counter()
                    if now >= stop:
                        break
                out[name].append(count / (now - begin))
    finally:
        watched.close()
        asking.close()
    return out


def calls(query: str, events: str, rounds: int, duration_s: float) -> dict[str, Any]:
    """``call(fn)`` against ``fn(find_server())`` by hand, one watching client, alternating."""
    client = ProxyClient(query, events=events, watch=True)

    def fn(server: Any) -> Any:
        return server  # trivial: what is measured is what call() adds

    def by_hand() -> Any:
        return fn(client.find_server())

    def through_call() -> Any:
        return client.call(fn)

    out: dict[str, list[float]] = {"call": [], "by_hand": []}
    try:
        while client.watch_stats() is None or client.watch_stats().resyncs < 1:  # type: ignore[union-attr]
            time.sleep(0.01)
        for index in range(rounds):
            sides = [("call", through_call), ("by_hand", by_hand)]
            for name, run in sides if index % 2 == 0 else sides[::-1]:
                count = 0
                begin = time.perf_counter()
                stop = begin + duration_s
                while True:
                    for _ in range(256):
                        run()
                    count += 256
                    now = time.perf_counter()
                    if now >= stop:
                        break
                out[name].append(count / (now - begin))
    finally:
        client.close()
    return out


def watcher(query: str, events: str) -> dict[str, Any]:
    """Look up every ~0.1 ms until stdin closes; record each change of the answer."""
    client = ProxyClient(query, events=events, watch=True)
    changes: list[tuple[int, str | None]] = []
    done = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    last: str | None = ""
    announced = False
    try:
        while not done.is_set():
            server = client.find_server()
            addr = None if server is None else server.addr
            if addr != last:
                changes.append((time.monotonic_ns(), addr))
                last = addr
            if not announced and client._watcher is not None and client._watcher.fresh():
                print("ready", flush=True)
                announced = True
            # A service looks up between pieces of work that release the GIL;
            # a loop that never did would keep the watcher thread waiting for
            # it (up to the interpreter's 5 ms switch interval).
            time.sleep(0.0001)
        stats = client.watch_stats()
    finally:
        client.close()
    return {"changes": changes, "stats": None if stats is None else dataclasses.asdict(stats)}


def notifier(query: str, count: int, pause_s: float) -> dict[str, Any]:
    """``count`` notify_failed_server of the active server, ``pause_s`` apart; and request RTTs."""
    client = ProxyClient(query)
    notes: list[tuple[int, int, str | None]] = []
    rtts: list[int] = []
    paced_rtts: list[int] = []
    try:
        for _ in range(1000):
            begin = time.monotonic_ns()
            client.find_server()
            rtts.append(time.monotonic_ns() - begin)
        for _ in range(count):
            # The pause before a change also comes before this lookup: a read
            # of the same cold start, for comparison with the write.
            begin = time.monotonic_ns()
            head = client.find_server()
            paced_rtts.append(time.monotonic_ns() - begin)
            assert head is not None
            sent = time.monotonic_ns()
            client.notify_failed_server(head.addr)
            replied = time.monotonic_ns()
            after = client.find_server()
            notes.append((sent, replied, None if after is None else after.addr))
            time.sleep(pause_s)
    finally:
        client.close()
    return {"notes": notes, "rtt_ns": rtts, "paced_rtt_ns": paced_rtts}


def async_lookups(query: str, coroutines: int, duration_s: float) -> dict[str, Any]:
    async def main() -> int:
        async with AsyncProxyClient(query) as client:
            await client.find_server()
            stop = time.perf_counter() + duration_s
            counts = [0] * coroutines

            async def one(index: int) -> None:
                while time.perf_counter() < stop:
                    await client.find_server()
                    counts[index] += 1

            await asyncio.gather(*(one(i) for i in range(coroutines)))
            return sum(counts)

    begin = time.perf_counter()
    total = asyncio.run(main())
    return {"count": total, "elapsed": time.perf_counter() - begin}


def thread_lookups(query: str, threads: int, duration_s: float) -> dict[str, Any]:
    counts = [0] * threads
    clients = [ProxyClient(query) for _ in range(threads)]
    for client in clients:
        client.find_server()
    stop = time.perf_counter() + duration_s

    def one(index: int) -> None:
        client = clients[index]
        while time.perf_counter() < stop:
            client.find_server()
            counts[index] += 1

    begin = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - begin
    for client in clients:
        client.close()
    return {"count": sum(counts), "elapsed": elapsed}


def main(argv: list[str]) -> int:
    mode, query, *rest = argv
    result: dict[str, Any]
    if mode == "lookups":
        result = lookups(query, rest[0], int(rest[1]), float(rest[2]))
    elif mode == "calls":
        result = calls(query, rest[0], int(rest[1]), float(rest[2]))
    elif mode == "watcher":
        result = watcher(query, rest[0])
    elif mode == "notifier":
        result = notifier(query, int(rest[0]), float(rest[1]))
    elif mode == "async":
        result = async_lookups(query, int(rest[0]), float(rest[1]))
    elif mode == "threads":
        result = thread_lookups(query, int(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
