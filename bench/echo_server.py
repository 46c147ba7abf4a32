"""The baseline query server: raw pyzmq ROUTER + msgpack, nothing else.

Reads each request (decodes it with msgpack, as any server must) and answers
a fixed reply of the shape ``find_server`` returns. Runs until SIGTERM.

Usage: ``python bench/echo_server.py tcp://127.0.0.1:PORT``
"""

from __future__ import annotations

import sys

import msgpack  # type: ignore[import-untyped]
import zmq

# The shape of a version 2 reply: the server plus the view it was built from.
REPLY = msgpack.packb(
    {
        "ok": True,
        "server": {"addr": "10.0.0.1:4647"},
        "epoch": 1,
        "instance": "0123456789abcdef",
    }
)


def serve(endpoint: str) -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(endpoint)
    while True:
        frames = router.recv_multipart()
        msgpack.unpackb(frames[-1])
        router.send_multipart([*frames[:-1], REPLY])


if __name__ == "__main__":
    serve(sys.argv[1])
