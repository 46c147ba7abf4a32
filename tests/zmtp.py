"""A SUB peer spoken by hand (ZMTP 3.0): what a hostile subscriber can send, unbuffered.

A libzmq SUB keeps every subscription it sends, to send them all again when
it reconnects, and waits on its own queues; a peer written out here keeps
nothing and writes as fast as the proxy's kernel buffers take, so a flood of
a million subscriptions costs the sender nothing. Used by the subscription
flood test and benchmark.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

__all__ = ["SubscriptionFlood", "frame", "sub_handshake"]


def frame(body: bytes, *, command: bool = False) -> bytes:
    """One ZMTP 3.0 frame: flags (command, long), size, body."""
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def sub_handshake() -> bytes:
    """A SUB's greeting (ZMTP 3.0, NULL mechanism, as client) and its READY command."""
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)
    name, value = b"Socket-Type", b"SUB"
    ready = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return greeting + frame(ready, command=True)


class SubscriptionFlood:
    """Sends ``total`` distinct subscriptions to ``port``, as fast as they are taken, on a thread.

    When the proxy closes the connection it connects again and goes on with
    the next topics, so every subscription is sent once, over as many
    connections as the proxy makes it use.

    Args:
        port: the events socket's port on 127.0.0.1.
        total: subscriptions to send.
        topic: the ``index``-th distinct topic.
        chunk: subscriptions written at once (one ``sendall``).
    """

    def __init__(
        self, port: int, total: int, topic: Callable[[int], bytes], chunk: int = 500
    ) -> None:
        self.port = port
        self.total = total
        self._topic = topic
        self._chunk = chunk
        self.sent = 0
        self.connections = 0
        self.elapsed_s = 0.0
        """From the start to the last subscription sent (or the stop)."""
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="subscription-flood", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop sending (if it has not finished) and wait for the thread."""
        self.stop.set()
        self._thread.join()

    def due(self) -> int:
        """How many subscriptions may have been sent by now (all of them, unless paced)."""
        return self.total

    def _run(self) -> None:
        begin = time.monotonic()
        try:
            self._send_all()
        finally:
            self.elapsed_s = time.monotonic() - begin

    def _send_all(self) -> None:
        while self.sent < self.total and not self.stop.is_set():
            try:
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
            except OSError:
                self.stop.wait(0.01)  # the proxy is busy accepting: try again shortly
                continue
            self.connections += 1
            try:
                conn.sendall(sub_handshake())
                while self.sent < self.total and not self.stop.is_set():
                    due = self.due()
                    if due <= self.sent:
                        self.stop.wait(0.001)
                        continue
                    upto = min(due, self.sent + self._chunk)
                    conn.sendall(
                        b"".join(frame(b"\x01" + self._topic(i)) for i in range(self.sent, upto))
                    )
                    self.sent = upto
            except OSError:
                pass  # closed by the proxy (or stuck for a second): a new connection
            finally:
                conn.close()
