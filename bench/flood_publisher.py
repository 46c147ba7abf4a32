"""A hostile but allowed heartbeat publisher: 4096-server heartbeats, as fast as it can.

Each heartbeat replaces the backups (a new set of other-datacenter servers,
cycling through 8), so every one the proxy applies changes its state. The
PUB has ``ZMQ_XPUB_NODROP`` and a short queue: ``send`` waits at the
high-water mark instead of dropping, so the proxy sets the pace and the last
heartbeat sent is one it must end up applying. ``num_nodes`` and ``seq`` of
heartbeat i are ``FIRST + i``.

Runs until its standard input closes, then prints one line:
``<num_nodes of the last heartbeat sent> <count sent> <time.time() of the last send>``.

Usage: ``python bench/flood_publisher.py ENDPOINT PUBLISHER``
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq

TOPIC = b"heartbeat/global"
FIRST = 1_000_000
SERVERS = 4096
PRIMARIES = 8
VARIANTS = 8
SNDHWM = 16


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def server_list(variant: int) -> list[dict[str, Any]]:
    """The same dc1 primaries, and dc2 backups that differ with ``variant``."""

    def server(addr: str, datacenter: str) -> dict[str, Any]:
        return {
            "rpc_advertise_addr": addr,
            "rpc_major_version": 1,
            "rpc_minor_version": 1,
            "datacenter": datacenter,
        }

    primaries = [server(f"10.0.0.{i + 1}:4647", "dc1") for i in range(PRIMARIES)]
    backups = [
        server(f"10.{100 + variant}.{i >> 8}.{i & 255}:4647", "dc2")
        for i in range(SERVERS - PRIMARIES)
    ]
    return primaries + backups


def main(endpoint: str, publisher: str) -> None:
    # Five keys, servers first: the big part is encoded once per variant.
    bodies = [b"\x85" + _pack("servers") + _pack(server_list(v)) for v in range(VARIANTS)]
    tail = _pack("leader_rpc_addr") + _pack("") + _pack("publisher") + _pack(publisher)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.linger = 10_000  # what send accepted is delivered after the loop too
    sock.sndhwm = SNDHWM
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.sndtimeo = 100
    sock.connect(endpoint)
    sent = 0
    last = 0
    last_at = time.time()
    while not stop.is_set():
        number = _pack(FIRST + sent)
        payload = bodies[sent % VARIANTS] + _pack("num_nodes") + number + tail
        payload += _pack("seq") + number
        try:
            sock.send_multipart([TOPIC, payload])
        except zmq.Again:
            continue
        last, last_at = FIRST + sent, time.time()
        sent += 1
    print(last, sent, repr(last_at), flush=True)
    sock.close()
    context.term()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
