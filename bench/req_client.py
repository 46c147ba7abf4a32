"""One client process: a REQ loop sending raw ``find_server`` requests.

Warms up until ``start_at`` (a ``time.time()`` value shared by every client of
a run), then counts round trips and records each one's latency until
``start_at + duration``. Prints one JSON object: ``count``, ``elapsed`` and
``lat_us`` (every latency, in microseconds).

Usage: ``python bench/req_client.py ENDPOINT START_AT DURATION``
"""

from __future__ import annotations

import json
import sys
import time
from array import array

import msgpack  # type: ignore[import-untyped]
import zmq

REQUEST = msgpack.packb({"op": "find_server"})


def run(endpoint: str, start_at: float, duration: float) -> dict[str, object]:
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(endpoint)
    send, recv, clock = sock.send, sock.recv, time.perf_counter
    while time.time() < start_at:  # warm up: connect, fill caches
        send(REQUEST)
        recv()
    latencies = array("d")
    begin = clock()
    stop = begin + (start_at + duration - time.time())
    now = begin
    while now < stop:
        send(REQUEST)
        recv()
        after = clock()
        latencies.append(after - now)
        now = after
    sock.close()
    context.term()
    return {
        "count": len(latencies),
        "elapsed": now - begin,
        "lat_us": [round(x * 1e6, 1) for x in latencies],
    }


if __name__ == "__main__":
    json.dump(run(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])), sys.stdout)
