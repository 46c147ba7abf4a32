"""A heartbeat publisher: what a Nomad server's heartbeat looks like on the bus.

Used by the demo, the tests and ``rpcproxy publish``. Each heartbeat carries
``publisher`` and an increasing ``seq``, so a proxy drops replays and
reordered copies.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from bus.codec import encode_heartbeat
from bus.curve import CurveClient
from bus.heartbeats import heartbeat_topic
from bus.loop import needs_ipv6
from proxy import Heartbeat, HeartbeatServer

ServerList = Callable[[], Sequence[HeartbeatServer]]


class HeartbeatPublisher:
    """Publishes ``servers()`` on ``heartbeat/<region>`` every ``interval_s``.

    The PUB socket is created, used and closed by the publisher's own thread.
    ``servers`` is called on that thread each time, so the caller can change
    the list while it runs (thread-safe if it returns an immutable value).
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        connect: Sequence[str] = (),
        bind: Sequence[str] = (),
        region: str = "global",
        servers: ServerList,
        num_nodes: Callable[[], int] = lambda: 0,
        leader: Callable[[], str] = lambda: "",
        interval_s: float = 1.0,
        publisher: str | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        self._curve = curve
        self._context = context
        self._connect = tuple(connect)
        self._bind = tuple(bind)
        self._topic = heartbeat_topic(region)
        self._servers = servers
        self._num_nodes = num_nodes
        self._leader = leader
        self._interval_s = interval_s
        self.publisher = publisher or f"pub-{uuid.uuid4().hex[:8]}"
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rpcproxy-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def run_forever(self) -> None:
        """Publish on the calling thread until :meth:`stop` (or Ctrl-C)."""
        self._run()

    def heartbeat(self) -> Heartbeat:
        """The next heartbeat (advances ``seq``)."""
        self.seq += 1
        return Heartbeat(
            servers=tuple(self._servers()),
            num_nodes=self._num_nodes(),
            leader_rpc_addr=self._leader(),
            publisher=self.publisher,
            seq=self.seq,
        )

    def _run(self) -> None:
        pub: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
        try:
            pub.linger = 0
            pub.ipv6 = any(map(needs_ipv6, self._bind + self._connect))
            if self._curve is not None:
                self._curve.secure(pub)
            for endpoint in self._bind:
                pub.bind(endpoint)
            for endpoint in self._connect:
                pub.connect(endpoint)
            while True:
                pub.send_multipart([self._topic, encode_heartbeat(self.heartbeat())])
                if self._stop.wait(self._interval_s):
                    return
        finally:
            pub.close()
