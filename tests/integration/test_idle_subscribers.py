"""Subscribers of the events socket that never read must not grow the proxy (issue 16).

A hostile peer against the real ``rpcproxy serve``: hundreds of SUB sockets
subscribe to the events (docs/protocol.md section 5) and never read, with the
smallest receive queue and kernel buffer they can ask for, so whatever the
proxy queues for them stays in the proxy. The active server then changes
tens of thousands of times as fast as one client can make it. Events are
state, so the proxy owes such a subscriber a short queue and no more
(section 8): its resident memory must stay within a bound set by the number
of subscribers, not by the number of events, lookups must keep being
answered, a subscriber that reads must still learn the current server, and
once the idle ones leave the memory must come back.

The bound is on memory, never on time: with 10,000 events queued per
subscriber (the old ``sndhwm``) the same run grows the proxy by hundreds of
MB, whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from tests.helpers import pack, unpack
from tests.integration.serving import CTX, EVENT_TOPIC, EventSub, RawClient, Serve
from tests.never_reading import never_reading
from tests.procfs import connections_to, vm_rss_mib
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

SUBSCRIBERS = 300
CHANGES = 30_000
"""Changes of the active server: enough to fill 10,000-event queues behind full kernel buffers."""

WINDOW = 64
"""Change requests in flight (the proxy admits 128 waiting writes)."""

SAMPLE_EVERY = 500
"""Replies between two looks at the proxy's memory and two lookups."""

GROWTH_BOUND_MIB = 64
"""RSS growth allowed with the idle subscribers connected and the changes done.

About 16 MiB is what 300 connections and their 32-event queues cost; with
10,000-event queues the same run takes hundreds of MiB.
"""

RETURN_MARGIN_MIB = 12
"""How close to its start RSS must come once the idle subscribers are gone."""

LONG_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]) + ":4647"
"""A 253-character host name: the longest event, which fills kernel buffers fastest."""

FINAL = "10.7.7.7:4647"


@contextlib.contextmanager
def enough_descriptors(needed: int) -> Iterator[None]:
    """Raise the soft descriptor limit for this process if it is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def change(query: str, count: int, every: Callable[[], None]) -> None:
    """``count`` changes of the active server, pipelined on a DEALER; ``every`` runs between.

    ``add_primary_server`` and ``remove_server`` of one address from an
    empty list, so each write changes the active server (an event), and a
    write answered ``unavailable`` (a proxy far behind) leaves the next ones
    in step.
    """
    dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(query)
    ops = [
        pack({"op": "add_primary_server", "addr": LONG_NAME}),
        pack({"op": "remove_server", "addr": LONG_NAME}),
    ]
    sent = replied = 0
    try:
        while replied < count:
            while sent < count and sent - replied < WINDOW:
                dealer.send_multipart([b"", ops[sent % 2]])
                sent += 1
            assert dealer.poll(30_000), f"no reply to a change in 30 s ({replied} of {sent})"
            reply: dict[str, Any] = unpack(dealer.recv_multipart()[-1])
            ok = reply.get("ok") is True or reply["error"]["code"] == "unavailable"
            assert ok, reply
            replied += 1
            if replied % SAMPLE_EVERY == 0:
                every()
    finally:
        dealer.close(linger=0)


def test_subscribers_that_never_read_leave_memory_bounded_and_returned(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory()
    pid = serve.proc.pid
    port = int(serve.events.rsplit(":", 1)[1])
    lookups = RawClient(serve.query)
    try:
        # Warm up on the same changes with nobody subscribed, so the start
        # is a running proxy's memory, not a fresh one's.
        change(serve.query, 2_000, lambda: None)
        start = vm_rss_mib(pid)
        epoch_before = serve.call("ping")["epoch"]
        peak = start
        answered = 0

        def sample() -> None:
            nonlocal peak, answered
            peak = max(peak, vm_rss_mib(pid))
            # Lookups go on (generous timeout: a slow machine is not a failure).
            assert lookups.call("find_server", timeout=30)["ok"] is True
            answered += 1

        with (
            enough_descriptors(4 * SUBSCRIBERS + 256),
            never_reading(serve.events, SUBSCRIBERS, EVENT_TOPIC),
        ):
            poll_until(
                lambda: connections_to(port).count == SUBSCRIBERS,
                timeout=60,
                interval=0.05,
                what=f"{SUBSCRIBERS} subscribers to connect",
            )
            change(serve.query, CHANGES, sample)
            sample()
            made = serve.call("ping")["epoch"] - epoch_before
            assert made >= CHANGES // 2, f"only {made} changes were made"
            growth = peak - start
            assert growth < GROWTH_BOUND_MIB, (
                f"{SUBSCRIBERS} idle subscribers grew the proxy by {growth:.1f} MiB"
                f" ({start:.1f} -> {peak:.1f}) over {made} changes"
            )
            assert answered == CHANGES // SAMPLE_EVERY + 1

            # A subscriber that reads still learns the current server: the
            # change's own event, or the next refresh if it joined too late.
            reader = EventSub(serve.events, consecutive=False)
            try:
                serve.call("add_primary_server", addr=FINAL)

                def final_seen() -> bool:
                    if not reader.sock.poll(100):
                        return False
                    server = reader.next_event()["server"]
                    return server is not None and server["addr"] == FINAL

                poll_until(final_seen, timeout=30, interval=0, what="an event naming the server")
            finally:
                reader.close()

        poll_until(
            lambda: connections_to(port).count == 0,
            timeout=60,
            interval=0.05,
            what="the subscribers' connections to close",
        )
        # Once they are gone, the memory they held goes back to the OS.
        poll_until(
            lambda: vm_rss_mib(pid) <= start + RETURN_MARGIN_MIB,
            timeout=30,
            interval=0.1,
            what=f"RSS to come back near {start:.1f} MiB (peak {peak:.1f})",
        )
    finally:
        lookups.close()
