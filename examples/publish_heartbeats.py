"""A service publishing heartbeats: tell every proxy which Nomad servers exist.

    python examples/publish_heartbeats.py --proxy tcp://127.0.0.1:4651 \
        --server 10.0.0.1:4647 --server 10.0.0.2:4647 --count 5

Each heartbeat is two frames on a PUB socket: the topic ``heartbeat/<region>``
and a MessagePack map. ``publisher`` and an increasing ``seq`` let the proxy
drop replays and reordered copies.
"""

from __future__ import annotations

import argparse
import threading

import msgspec
import zmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="tcp://127.0.0.1:4651", help="heartbeat endpoint")
    parser.add_argument("--region", default="global")
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--server", action="append", default=[], help="a server address")
    parser.add_argument("--count", type=int, default=10, help="heartbeats to send")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between them")
    args = parser.parse_args()

    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.connect(args.proxy)
    pause = threading.Event()
    for seq in range(1, args.count + 1):
        payload = {
            "servers": [
                {
                    "rpc_advertise_addr": addr,
                    "rpc_major_version": 1,
                    "rpc_minor_version": 1,
                    "datacenter": args.datacenter,
                }
                for addr in args.server
            ],
            "num_nodes": 3,
            "leader_rpc_addr": args.server[0] if args.server else "",
            "publisher": "example-publisher",
            "seq": seq,
        }
        pub.send_multipart([f"heartbeat/{args.region}".encode(), msgspec.msgpack.encode(payload)])
        print(f"sent heartbeat {seq} listing {len(args.server)} servers", flush=True)
        pause.wait(args.interval)  # PUB has no reply to wait for: this is the pace.
    pub.close(linger=1000)


if __name__ == "__main__":
    main()
