"""The query socket's find_server fast path answers exactly what the normal path answers.

The fast path (bus/service/codec.py, ``find_server_id``) recognises a few
find_server frames by their bytes and splices the id into pre-encoded reply
bytes. Its only promise: a frame it takes gets the very bytes the normal path
(decode, validate, encode_reply) would send for that frame, and every other
frame still takes the normal path. The QueryServer here is not started: a
fake ROUTER feeds it frames on this thread and keeps what it sends, so each
frame is answered both ways at the same snapshot and the bytes compared.

Frames are written with the independent ``msgpack`` package, as a client would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rpcproxy.actors import Snapshot, SnapshotBox
from rpcproxy.bus.service.codec import FIND_SERVER_NO_ID, find_server_id
from rpcproxy.bus.service.counts import NO_COUNTS, ServiceCounts
from rpcproxy.bus.service.metrics import Metrics
from rpcproxy.bus.service.query import QueryServer
from rpcproxy.proxy import ProxyState, add_primary, parse_address

ENVELOPE = [b"\x00peer", b""]
INSTANCE = "0123456789abcdef"
_SETTINGS = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


class FakeRouter:
    """Just what QueryServer._serve_requests and _send call on a ROUTER."""

    def __init__(self) -> None:
        self.inbox: list[bytes] = []
        self.sent: list[list[bytes]] = []
        self._parts: list[bytes] = []

    def recv(self, flags: int = 0) -> bytes:
        return self.inbox.pop(0)

    def getsockopt(self, option: int) -> int:
        # One request at a time: more parts while the inbox holds any, and
        # nothing more to read (ZMQ_EVENTS) once it is empty.
        assert option in (zmq.RCVMORE, zmq.EVENTS)
        if option == zmq.EVENTS:
            return int(zmq.POLLIN) if self.inbox else 0
        return 1 if self.inbox else 0

    def send(self, frame: bytes, flags: int = 0) -> None:
        self._parts.append(frame)
        if not flags & zmq.SNDMORE:
            self.sent.append(self._parts)
            self._parts = []


def _snapshot(*addrs: str, version: int = 1, epoch: int = 3) -> Snapshot:
    state = ProxyState()
    for text in addrs:
        state, _ = add_primary(state, parse_address(text))
    return Snapshot(state, float("inf"), version, epoch=epoch)


BOX = SnapshotBox(_snapshot("10.0.0.1:4647", "10.0.0.2:4647"))


def _server(metrics: ServiceCounts = NO_COUNTS) -> tuple[QueryServer, FakeRouter]:
    # Reads never reach the actor: no proxy is needed.
    server = QueryServer(
        cast(Any, zmq.Context.instance()),
        "inproc://unused",
        cast(Any, None),
        BOX,
        instance=INSTANCE,
        metrics=metrics,
    )
    router = FakeRouter()
    server._router = cast(Any, router)
    return server, router


SERVER, ROUTER = _server()


def served(frame: bytes) -> bytes:
    """The reply to ``frame`` as the server answers it, fast path or not."""
    ROUTER.inbox[:] = [*ENVELOPE, frame]
    SERVER._serve_requests()
    (reply,) = ROUTER.sent
    ROUTER.sent.clear()
    assert reply[:-1] == ENVELOPE
    return reply[-1]


def normally(frame: bytes) -> bytes:
    """The reply to ``frame`` by the normal path only (decode, validate, encode)."""
    SERVER._serve(list(ENVELOPE), frame)
    (reply,) = ROUTER.sent
    ROUTER.sent.clear()
    return reply[-1]


def takes_fast_path(frame: bytes) -> bool:
    return frame in FIND_SERVER_NO_ID or find_server_id(frame) is not None


def pack(value: Any) -> bytes:
    return cast(bytes, msgpack.packb(value, use_bin_type=True))


@pytest.fixture(autouse=True)
def _fresh_snapshot() -> Iterator[None]:
    BOX.publish(_snapshot("10.0.0.1:4647", "10.0.0.2:4647"))
    yield


# --------------------------------------------------------------------------
# Which frames are recognised.


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "find_server"},
        {"op": "find_server", "v": 1},
        {"v": 1, "op": "find_server"},
        {"op": "find_server", "id": 7},
        {"op": "find_server", "v": 1, "id": 7},  # rpcproxy's own client
    ],
)
def test_the_common_frames_take_the_fast_path(request_: dict[str, Any]) -> None:
    frame = pack(request_)
    assert takes_fast_path(frame)
    assert served(frame) == normally(frame)


@pytest.mark.parametrize(
    "request_",
    [
        {"id": 7, "op": "find_server"},  # another key order
        {"op": "find_server", "id": 7, "x": 1},  # an unknown key
        {"op": "find_server", "v": 2},  # unsupported_version
        {"op": "find_server", "v": 1.0, "id": 7},
        {"op": "find_server", "id": 1.5},  # a float id
        {"op": "find_server", "id": [1]},
        {"op": "find_server", "id": b"\x01"},  # bin
        {"op": "find_server", "id": "é"},  # not ASCII
        {"op": "servers", "id": 7},
    ],
)
def test_other_frames_take_the_normal_path(request_: dict[str, Any]) -> None:
    frame = pack(request_)
    assert not takes_fast_path(frame)
    assert served(frame) == normally(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x82\xa2op\xabfind_server\xa2id\xcd\x00\x05",  # 5 written wider than needed
        b"\x82\xa2op\xabfind_server\xa2id\xd0\x05",  # 5 as a signed int8
        b"\x82\xa2op\xabfind_server\xa2id\xd9\x01a",  # "a" as a str8
        b"\x82\xa2op\xabfind_server\xa2id\xa3ab",  # a string cut short
        b"\x82\xa2op\xabfind_server\xa2id\x05\x05",  # a byte after the id
        b"\x82\xa2op\xabfind_server\xa2id",  # no id at all
        b"\x82\xa2op\xabfind_server\xa2id\xa1\xff",  # not UTF-8
    ],
)
def test_ids_not_written_as_msgspec_writes_them_take_the_normal_path(frame: bytes) -> None:
    assert find_server_id(frame) is None
    assert served(frame) == normally(frame)


# --------------------------------------------------------------------------
# Properties: the same bytes as the normal path, whatever the id.

IDS = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    # Each MessagePack int width's edges, where the shortest form changes.
    st.sampled_from(
        [
            0,
            127,
            128,
            255,
            256,
            65535,
            65536,
            (1 << 32) - 1,
            1 << 32,
            (1 << 64) - 1,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            -(1 << 31),
            -(1 << 31) - 1,
            -(1 << 63),
        ]
    ),
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=127), min_size=25, max_size=40),
    st.none(),
    st.booleans(),
)


@_SETTINGS
@given(request_id=IDS, with_v=st.booleans())
def test_any_id_gets_the_normal_paths_bytes(request_id: Any, with_v: bool) -> None:
    request = {"op": "find_server", "v": 1, "id": request_id} if with_v else {}
    request = request or {"op": "find_server", "id": request_id}
    frame = pack(request)
    reply = served(frame)
    assert reply == normally(frame)
    assert msgpack.unpackb(reply)["id"] == request_id
    # Every int of any width, nil and bools are recognised; so is short ASCII.
    if request_id is None or isinstance(request_id, int):
        assert takes_fast_path(frame)


_PATTERNS = [
    pack({"op": "find_server"}),
    pack({"op": "find_server", "v": 1}),
    pack({"op": "find_server", "id": 300}),
    pack({"op": "find_server", "v": 1, "id": "abc"}),
]


@st.composite
def almost(draw: st.DrawFn) -> bytes:
    """A recognised frame with one byte changed, inserted, removed, or bytes appended."""
    frame = bytearray(draw(st.sampled_from(_PATTERNS)))
    at = draw(st.integers(0, len(frame) - 1))
    byte = draw(st.integers(0, 255))
    match draw(st.sampled_from(["set", "insert", "delete", "append"])):
        case "set":
            frame[at] = byte
        case "insert":
            frame.insert(at, byte)
        case "delete":
            del frame[at]
        case _:
            frame += draw(st.binary(min_size=1, max_size=9))
    return bytes(frame)


@_SETTINGS
@given(frame=almost())
@example(frame=b"\x82\xa2op\xabfind_server\xa2id\xcc\x7f")
@example(frame=b"\x82\xa2op\xabfind_server\xa2id\xd1\xff\x80")
@example(frame=b"\x83\xa2op\xabfind_server\xa1v\x02\xa2id\x01")
def test_frames_that_look_almost_like_the_pattern(frame: bytes) -> None:
    assert served(frame) == normally(frame)


def test_a_new_snapshot_is_answered_at_once() -> None:
    with_id = pack({"op": "find_server", "id": 1})
    first = msgpack.unpackb(served(with_id))
    assert (first["server"], first["epoch"]) == ({"addr": "10.0.0.1:4647"}, 3)
    BOX.publish(_snapshot("10.0.0.2:4647", version=2, epoch=4))
    for frame in (with_id, pack({"op": "find_server"})):
        reply = served(frame)
        assert reply == normally(frame)
        assert msgpack.unpackb(reply)["server"] == {"addr": "10.0.0.2:4647"}
        assert msgpack.unpackb(reply)["epoch"] == 4
    BOX.publish(_snapshot(version=3, epoch=5))
    assert msgpack.unpackb(served(frame))["server"] is None
    assert served(frame) == normally(frame)


def test_the_fast_path_is_timed_like_the_normal_path() -> None:
    """The request-duration histogram counts a fast find_server under its op, as before."""
    metrics = Metrics()
    server, router = _server(metrics)
    histogram = metrics.request_duration.labels("find_server")

    def count() -> float:
        (metric,) = histogram.collect()
        (sample,) = [s for s in metric.samples if s.name.endswith("_count")]
        return float(sample.value)

    router.inbox[:] = [*ENVELOPE, pack({"op": "find_server", "id": 9})]
    server._serve_requests()
    router.inbox[:] = [*ENVELOPE, pack({"id": 9, "op": "find_server"})]
    server._serve_requests()
    assert count() == 2


def test_many_peers_with_requests_queued_all_get_their_own_replies(
    ctx: zmq.Context[Any],
) -> None:
    """Over a real socket: requests queued from several peers, read in batches, each answered."""
    server = QueryServer(ctx, "tcp://127.0.0.1:*", cast(Any, None), BOX, instance=INSTANCE)
    server.start()
    peers = [ctx.socket(zmq.DEALER) for _ in range(4)]
    try:
        for peer in peers:
            peer.linger = 0
            peer.connect(server.bound_endpoint)
        frames = [
            pack({"op": "find_server", "id": 1000 + i}) if i % 3 else pack({"op": "ping", "id": i})
            for i in range(30)
        ]
        for i, frame in enumerate(frames):
            peers[i % len(peers)].send_multipart([b"", frame])
        for index, peer in enumerate(peers):
            sent = frames[index :: len(peers)]
            for frame in sent:
                assert peer.poll(5000), "no reply"
                delimiter, reply = peer.recv_multipart()
                assert delimiter == b""
                assert reply == normally(frame)
    finally:
        for peer in peers:
            peer.close()
        server.stop()
