"""A hostile but allowed heartbeat publisher, for the flood tests and the adversary run.

It sends 4096-server heartbeats as fast as the proxy reads them: its PUB has
``ZMQ_XPUB_NODROP``, so at the high-water mark ``send`` waits instead of
dropping. The proxy sets the pace, so nothing is lost in transport and the
last heartbeat sent is one the proxy must end up applying. Each heartbeat
replaces the backups (a new set of other-datacenter servers), so every one
that is applied changes the state: the most work a heartbeat can cause.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq

TOPIC = b"heartbeat/global"
PRIMARIES = 8
SNDHWM = 16
"""The publisher's own queue: heartbeats sent but not yet taken by the proxy."""
FIRST = 1_000_000
"""Flood heartbeats carry ``num_nodes`` and ``seq`` from here on: always 4-byte msgpack ints."""


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _server(addr: str, datacenter: str) -> dict[str, Any]:
    return {
        "rpc_advertise_addr": addr,
        "rpc_major_version": 1,
        "rpc_minor_version": 1,
        "datacenter": datacenter,
    }


def server_list(variant: int, count: int = 4096) -> list[dict[str, Any]]:
    """The same dc1 primaries, and backups of dc2 that differ with ``variant``."""
    primaries = [_server(f"10.0.0.{i + 1}:4647", "dc1") for i in range(PRIMARIES)]
    backups = [
        _server(f"10.{100 + variant}.{i >> 8}.{i & 255}:4647", "dc2")
        for i in range(count - PRIMARIES)
    ]
    return primaries + backups


class Flood:
    """Publishes flood heartbeats from its own thread until :meth:`stop`.

    Args:
        context: the test's ZeroMQ context.
        endpoint: the proxy's heartbeat endpoint to connect to.
        publisher: the heartbeats' ``publisher``.
        variants: how many different backup sets it cycles through.
        servers: servers per heartbeat.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        *,
        publisher: str = "flood",
        variants: int = 8,
        servers: int = 4096,
    ) -> None:
        self._context = context
        self._endpoint = endpoint
        # The payload is a map of five keys, servers first: the (big) servers
        # part is encoded once per variant, the rest per heartbeat.
        self._bodies = [
            b"\x85" + _pack("servers") + _pack(server_list(v, servers)) for v in range(variants)
        ]
        self._tail = _pack("leader_rpc_addr") + _pack("") + _pack("publisher") + _pack(publisher)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._error: BaseException | None = None
        self.sent = 0
        self.last = 0
        """``num_nodes`` (and ``seq``) of the last heartbeat sent."""

    def payload(self, index: int) -> bytes:
        """The ``index``-th flood heartbeat (``num_nodes`` = ``seq`` = FIRST + index)."""
        number = _pack(FIRST + index)
        body = self._bodies[index % len(self._bodies)]
        return body + _pack("num_nodes") + number + self._tail + _pack("seq") + number

    def start(self) -> Flood:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """Stop sending; return ``num_nodes`` of the last heartbeat sent."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the flood publisher did not stop")
        if self._error is not None:
            raise self._error
        return self.last

    def _run(self) -> None:
        try:
            sock: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
            try:
                # What send() accepted is delivered after stop() too, so the
                # last heartbeat sent is the last one the proxy gets; a short
                # queue keeps "sent" close to "arrived".
                sock.linger = 10_000
                sock.sndhwm = SNDHWM
                sock.setsockopt(zmq.XPUB_NODROP, 1)
                sock.sndtimeo = 100  # so a full queue cannot hide a stop request
                sock.connect(self._endpoint)
                index = 0
                payload = self.payload(index)
                while not self._stop.is_set():
                    try:
                        sock.send_multipart([TOPIC, payload])
                    except zmq.Again:
                        continue
                    self.sent += 1
                    self.last = FIRST + index
                    index += 1
                    payload = self.payload(index)
            finally:
                sock.close()
        except BaseException as exc:  # reported by stop()
            self._error = exc


def main(argv: list[str]) -> int:
    """``python tests/integration/flood.py ENDPOINT SECONDS``: flood from its own process.

    Prints the ``num_nodes`` of the last heartbeat sent and how many were sent.
    """
    endpoint, seconds = argv[0], float(argv[1])
    context: zmq.Context[Any] = zmq.Context()
    flood = Flood(context, endpoint).start()
    # Not a wait for something to happen: the flood's length is the load asked for.
    time.sleep(seconds)
    last = flood.stop()
    print(last, flood.sent, flush=True)
    context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
