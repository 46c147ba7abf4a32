"""A subscriber: follow the active server as it changes.

    python examples/watch_events.py --proxy tcp://127.0.0.1:4652 --count 3

Every change of the active server is published on ``event/active_server``
with the new server (or nil), the reason it changed and its ``epoch`` (one
more per change). Every second or so the proxy also repeats the current
server with reason ``refresh``: this example skips those (a client that keeps
a local copy uses them to know the proxy is alive; ``ProxyClient(...,
watch=True)`` does all of that for you).
"""

from __future__ import annotations

import argparse

import msgspec
import zmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="tcp://127.0.0.1:4652", help="events endpoint")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args()

    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.subscribe(b"event/active_server")
    sub.connect(args.proxy)
    print("subscribed", flush=True)
    seen = 0
    while args.count == 0 or seen < args.count:
        _topic, payload = sub.recv_multipart()
        event = msgspec.msgpack.decode(payload)
        if event["reason"] == "refresh":
            continue
        server = event["server"]["addr"] if event["server"] else "none"
        print(f"active server: {server} ({event['reason']}, epoch {event['epoch']})", flush=True)
        seen += 1
    sub.close()


if __name__ == "__main__":
    main()
