"""Requests of too many frames get ``bad_request`` and change nothing (issue 9 row 12).

A request is an envelope and one body; the proxy accepts up to 15 frames from
a peer (16 with the routing id its ROUTER adds). Beyond that, docs/protocol.md's
"every other bad input ... always gets an error reply" holds: the reply goes
to the sender with an empty delimiter, as a REQ (or a DEALER that sent one)
expects, and echoes none of the peer's frames (README, "Wire").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from tests.helpers import pack, unpack
from tests.integration.serving import CTX, Serve, start_serve, stop_and_check, without_view

pytestmark = pytest.mark.integration

TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    serve = start_serve(tmp_path_factory.mktemp("envelope"), events=False)
    yield serve
    stop_and_check(serve)


def exchange(proxy: Serve, kind: int, frames: list[bytes]) -> list[bytes]:
    sock: zmq.Socket[bytes] = CTX.socket(kind)
    try:
        sock.linger = 0
        sock.connect(proxy.query)
        sock.send_multipart(frames)
        assert sock.poll(TIMEOUT_MS), f"no reply to {len(frames)} frames"
        return sock.recv_multipart()
    finally:
        sock.close()


def error_of(body: bytes) -> dict[str, Any]:
    reply = unpack(body)
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    return error


@pytest.mark.parametrize("peer_frames", [16, 17, 100])
def test_a_req_with_too_many_frames_gets_bad_request(proxy: Serve, peer_frames: int) -> None:
    before = proxy.state()
    # A REQ adds the empty delimiter itself: it sends 1 + len(frames).
    write = pack({"op": "add_primary_server", "addr": "10.6.6.6"})
    (body,) = exchange(proxy, zmq.REQ, [b"x"] * (peer_frames - 2) + [write])

    error = error_of(body)
    assert error["code"] == "bad_request"
    assert f"got {peer_frames}" in error["message"]
    assert proxy.state() == before


def test_a_dealer_with_too_many_frames_gets_bad_request_after_its_delimiter(
    proxy: Serve,
) -> None:
    delimiter, body = exchange(
        proxy, zmq.DEALER, [b""] + [b"y" * 1000] * 30 + [pack({"op": "ping"})]
    )

    assert delimiter == b""
    assert error_of(body)["code"] == "bad_request"


def test_fifteen_frames_are_still_a_request(proxy: Serve) -> None:
    frames = exchange(proxy, zmq.DEALER, [b""] + [b"hop"] * 13 + [pack({"op": "ping"})])

    assert frames[:-1] == [b""] + [b"hop"] * 13
    assert without_view(unpack(frames[-1])) == {"ok": True, "pong": True}
