"""The baseline heartbeat reader: a raw pyzmq SUB that decodes payloads with msgpack.

Binds ``ENDPOINT`` with the proxy's receive high-water mark and reports on a
PUSH socket connected to ``CONTROL``: ``ready`` for each sync payload
(``seq`` 0), and ``done <received> <gaps>`` once ``COUNT`` data payloads have
arrived, where ``gaps`` counts payloads whose ``seq`` was not the previous
one plus one. Runs until SIGTERM.

Usage: ``python bench/sub_baseline.py ENDPOINT CONTROL COUNT``
"""

from __future__ import annotations

import sys

import msgpack  # type: ignore[import-untyped]
import zmq

TOPIC = b"heartbeat/global"
RCVHWM = 32
"""The proxy's own (bus/heartbeats.py DEFAULT_RCVHWM), so both read through the same queue."""


def serve(endpoint: str, control_endpoint: str, count: int) -> None:
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = RCVHWM
    sub.subscribe(TOPIC)
    sub.bind(endpoint)
    control = context.socket(zmq.PUSH)
    control.linger = 0
    control.connect(control_endpoint)
    received = gaps = last_seq = 0
    while True:
        topic, payload = sub.recv_multipart()
        seq = msgpack.unpackb(payload)["seq"]
        if topic != TOPIC:
            continue
        if seq == 0:
            control.send(b"ready")
            continue
        received += 1
        gaps += seq != last_seq + 1
        last_seq = seq
        if received == count:
            control.send(f"done {received} {gaps}".encode())
            received = gaps = last_seq = 0


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
