"""Fuzzing the codec: whatever arrives, only RequestError/HeartbeatError come out.

Arbitrary bytes, arbitrary MessagePack, and maps shaped like requests and
heartbeats (the right op and keys, any values). A decoded request is one of
the typed requests of its op; an error has a protocol code and a bounded
message.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, target
from hypothesis import strategies as st

from rpcproxy.bus.service.codec import (
    HeartbeatError,
    RequestError,
    decode_heartbeat,
    encode_request_error,
)
from rpcproxy.bus.service.ops import Request, decode_request
from rpcproxy.bus.wire import ErrorCode
from rpcproxy.proxy import Heartbeat
from tests.helpers import pack

from ._branches import Branches
from ._strategies import (
    fuzz_settings,
    heartbeat_frames,
    heartbeat_maps,
    raw_frames,
    request_maps,
)

MAX_MESSAGE_CHARS = 2000
"""An error message is built from bounded previews, never from the whole input."""


def decode_or_error(frame: bytes) -> Request | RequestError:
    try:
        return decode_request(frame)
    except RequestError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert isinstance(exc.message, str)
        assert len(exc.message) < MAX_MESSAGE_CHARS, exc.message[:200]
        # Every error can be encoded as a reply.
        assert isinstance(encode_request_error(exc), bytes)
        return exc


def heartbeat_or_error(payload: bytes) -> Heartbeat | HeartbeatError:
    try:
        heartbeat = decode_heartbeat(payload)
    except HeartbeatError as exc:
        assert len(str(exc)) < MAX_MESSAGE_CHARS
        return exc
    assert isinstance(heartbeat, Heartbeat)
    assert isinstance(heartbeat.num_nodes, int) and heartbeat.num_nodes >= 0
    assert isinstance(heartbeat.leader_rpc_addr, str)
    for server in heartbeat.servers:
        assert isinstance(server.rpc_advertise_addr, str)
        assert isinstance(server.rpc_major_version, int)
        assert isinstance(server.rpc_minor_version, int)
        assert isinstance(server.datacenter, str)
    return heartbeat


@fuzz_settings("binary")
@given(st.binary(max_size=64))
def test_both_decoders_on_random_bytes(data: bytes) -> None:
    decode_or_error(data)
    heartbeat_or_error(data)


@fuzz_settings("request_bytes")
@given(raw_frames)
def test_decode_request_on_arbitrary_bytes(frame: bytes) -> None:
    decode_or_error(frame)


REQUEST_SHAPED = Branches("request_shaped", "accepted", "refused")


@REQUEST_SHAPED.each_taken
@fuzz_settings("request_shaped")
@given(request_maps)
def test_decode_request_on_request_shaped_maps(message: dict[Any, Any]) -> None:
    result = decode_or_error(pack(message))
    if isinstance(result, RequestError):
        REQUEST_SHAPED.took("refused")
        return
    REQUEST_SHAPED.took("accepted")
    # Accepted: it names a real op, speaks v1, and the id comes back as sent.
    assert message["op"] == result.op
    v = message.get("v", 1)
    assert type(v) is int and v == 1
    sent = message.get("id")
    if type(sent) in (str, int, bool, type(None)) and "id" in message:
        assert result.id == sent and type(result.id) is type(sent)


@fuzz_settings("heartbeat_bytes")
@given(raw_frames)
def test_decode_heartbeat_on_arbitrary_bytes(payload: bytes) -> None:
    heartbeat_or_error(payload)


HEARTBEAT_SHAPED = Branches("heartbeat_shaped", "accepted", "refused")


@HEARTBEAT_SHAPED.each_taken
@fuzz_settings("heartbeat_shaped")
@given(heartbeat_maps)
def test_decode_heartbeat_on_heartbeat_shaped_maps(payload: dict[Any, Any]) -> None:
    result = heartbeat_or_error(pack(payload))
    if isinstance(result, HeartbeatError):
        HEARTBEAT_SHAPED.took("refused")
        return
    HEARTBEAT_SHAPED.took("accepted")
    # Accepted heartbeats with more servers check more: steer towards them.
    target(len(result.servers), label="servers in an accepted heartbeat")
    assert len(result.servers) == len(payload["servers"])
    assert result.num_nodes == payload["num_nodes"]


@fuzz_settings("heartbeat_as_request")
@given(heartbeat_frames)
def test_heartbeat_payloads_as_requests_never_crash(payload: bytes) -> None:
    """The same bytes on the query socket: an error reply or a request, nothing else."""
    decode_or_error(payload)
