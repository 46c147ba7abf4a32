"""ApplyHeartbeats: the conflated batch from the SUB socket, one in the mailbox at a time."""

from __future__ import annotations

import threading

from rpcproxy.actors import ApplyHeartbeat, ApplyHeartbeats

from ._fakes import TIMEOUT, A, B, hb
from .conftest import StartProxy


def test_a_batch_is_applied_in_order_and_then_says_it_is_done(start_proxy: StartProxy) -> None:
    h = start_proxy()
    seen: list[tuple[str, ...]] = []
    done = threading.Event()

    def on_done() -> None:
        # Called once the batch is visible: the sender may send the next.
        seen.append(tuple(p.name for p in h.box.current.publishers))
        done.set()

    batch = (hb((A, "dc1"), publisher="p", seq=1), hb((B, "dc1"), publisher="q", seq=1))
    h.ref.tell(ApplyHeartbeats(batch, on_done))

    assert done.wait(TIMEOUT)
    assert seen == [("p", "q")]
    assert h.state.primaries == (B,)  # the later one wins


def test_a_broken_done_callback_does_not_stop_the_actor(start_proxy: StartProxy) -> None:
    h = start_proxy()

    def broken() -> None:
        raise RuntimeError("boom")

    h.ref.tell(ApplyHeartbeats((hb((A, "dc1")),), broken))

    assert h.request(lambda r: ApplyHeartbeat(hb((A, "dc1")), r)).changed is False
    assert h.state.primaries == (A,)
