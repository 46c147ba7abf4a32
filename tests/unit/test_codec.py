"""The MessagePack codec (docs/protocol.md "Encoding", sections 1, 2 and 5).

Frames are built, and replies read back, with the independent ``msgpack``
package: the tests speak MessagePack the way a non-Python client would, not
msgspec talking to itself.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcproxy.bus.service.codec import (
    NO_ID,
    OPS,
    Decoder,
    HeartbeatError,
    RequestError,
    decode_heartbeat,
    encode_error,
    encode_event,
    encode_heartbeat,
    encode_ok,
    encode_request_error,
    new_instance_id,
    server_of,
)
from rpcproxy.bus.service.ops import (
    READ_ONLY_OPS,
    AddPrimaryRequest,
    FindServerRequest,
    HeartbeatRequest,
    NotifyFailedRequest,
    PingRequest,
    RebalanceRequest,
    RemoveServerRequest,
    ResetRebalanceTimerRequest,
    ServersRequest,
    SetBackupsRequest,
    StatusRequest,
    decode_request,
)
from rpcproxy.bus.wire import ErrorCode, Op
from rpcproxy.proxy import DEFAULT_MAX_SERVERS, Heartbeat, HeartbeatServer, parse_address
from tests.helpers import pack, unpack


def request_error(frame: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_request(frame)
    return info.value


def entry(
    addr: str = "10.0.0.1", dc: str = "dc1", major: int = 1, minor: int = 1
) -> dict[str, Any]:
    return {
        "rpc_advertise_addr": addr,
        "rpc_major_version": major,
        "rpc_minor_version": minor,
        "datacenter": dc,
    }


def heartbeat_keys(**overrides: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {
        "servers": [entry("10.0.0.1"), entry("10.0.0.2:4000", dc="dc2")],
        "num_nodes": 12,
        "leader_rpc_addr": "10.0.0.1:4647",
    }
    keys.update(overrides)
    return keys


DEEP = b"\x91" * 100_000 + b"\xc0"
"""An array nested 100,000 deep: far past any recursion limit."""


# --------------------------------------------------------------------------
# Every op decodes.


@pytest.mark.parametrize(
    ("op", "cls"),
    [
        ("ping", PingRequest),
        ("find_server", FindServerRequest),
        ("servers", ServersRequest),
        ("status", StatusRequest),
        ("rebalance", RebalanceRequest),
        ("reset_rebalance_timer", ResetRebalanceTimerRequest),
    ],
)
def test_keyless_ops_decode(op: str, cls: type[Any]) -> None:
    assert decode_request(pack({"op": op})) == cls()
    assert decode_request(pack({"op": op, "v": 1, "id": 7})) == cls(id=7)


@pytest.mark.parametrize(
    ("op", "cls"),
    [
        ("notify_failed_server", NotifyFailedRequest),
        ("add_primary_server", AddPrimaryRequest),
        ("remove_server", RemoveServerRequest),
    ],
)
def test_address_ops_decode_to_canonical_addresses(op: str, cls: type[Any]) -> None:
    request = decode_request(pack({"op": op, "addr": "Nomad-1.Example.com", "id": "a"}))
    assert request == cls(parse_address("nomad-1.example.com:4647"), id="a")
    assert isinstance(request, NotifyFailedRequest | AddPrimaryRequest | RemoveServerRequest)
    assert request.addr.canonical == "nomad-1.example.com:4647"


def test_set_backup_servers_decodes_every_address_in_order() -> None:
    request = decode_request(
        pack({"op": "set_backup_servers", "addrs": ["10.0.0.2", "[::1]:80", "b.consul"]})
    )
    assert isinstance(request, SetBackupsRequest)
    assert [a.canonical for a in request.addrs] == ["10.0.0.2:4647", "[::1]:80", "b.consul:4647"]
    assert request.id is NO_ID


def test_set_backup_servers_accepts_an_empty_list() -> None:
    assert decode_request(pack({"op": "set_backup_servers", "addrs": []})) == SetBackupsRequest(())


def test_heartbeat_op_decodes_to_a_domain_heartbeat() -> None:
    keys = heartbeat_keys(publisher="pub-1", seq=9)
    request = decode_request(pack({"op": "heartbeat", "id": 3, **keys}))
    assert request == HeartbeatRequest(
        Heartbeat(
            servers=(
                HeartbeatServer("10.0.0.1", 1, 1, "dc1"),
                HeartbeatServer("10.0.0.2:4000", 1, 1, "dc2"),
            ),
            num_nodes=12,
            leader_rpc_addr="10.0.0.1:4647",
            publisher="pub-1",
            seq=9,
        ),
        id=3,
    )


def test_heartbeat_op_keeps_unparsable_entry_addresses_for_rule_3() -> None:
    request = decode_request(pack({"op": "heartbeat", **heartbeat_keys(servers=[entry("a:0")])}))
    assert isinstance(request, HeartbeatRequest)
    assert request.heartbeat.servers[0].rpc_advertise_addr == "a:0"


def test_unknown_keys_are_ignored() -> None:
    frame = pack({"op": "remove_server", "addr": "a", "future": {"x": [1, 2]}, "id": None})
    assert decode_request(frame) == RemoveServerRequest(parse_address("a"), id=None)


def test_key_order_does_not_matter() -> None:
    frame = pack({"id": 1, "addr": "a", "v": 1, "op": "add_primary_server"})
    assert decode_request(frame) == AddPrimaryRequest(parse_address("a"), id=1)


@pytest.mark.parametrize(
    "request_id",
    [0, -1, 2**64 - 1, "req-1", b"\x00\xff", 1.5, None, False, [1, "a"], {"k": [1]}],
)
def test_any_id_is_carried_and_echoed(request_id: Any) -> None:
    request = decode_request(pack({"op": "ping", "id": request_id}))
    assert request.id == request_id
    assert unpack(encode_ok(request.id, pong=True))["id"] == request_id


def test_ops_and_read_only_ops() -> None:
    assert {
        "ping",
        "find_server",
        "servers",
        "status",
        "notify_failed_server",
        "add_primary_server",
        "set_backup_servers",
        "set_servers",
        "remove_server",
        "heartbeat",
        "rebalance",
        "reset_rebalance_timer",
    } == OPS
    assert {PingRequest, FindServerRequest, ServersRequest, StatusRequest} == READ_ONLY_OPS


_OP_KEYS: dict[str, dict[str, Any]] = {
    "notify_failed_server": {"addr": "10.0.0.1:4647"},
    "add_primary_server": {"addr": "10.0.0.1:4647"},
    "set_backup_servers": {"addrs": ["10.0.0.1:4647"]},
    "set_servers": {"addrs": ["10.0.0.1:4647"]},
    "remove_server": {"addr": "10.0.0.1:4647"},
    "heartbeat": {"servers": [], "num_nodes": 1, "leader_rpc_addr": ""},
}
"""The keys an op needs besides ``op``; ops not listed need none."""


def test_every_op_of_the_wire_vocabulary_is_answered_by_its_own_request_type() -> None:
    assert set(Op) == OPS
    decoded = {op: decode_request(pack({"op": op.value, **_OP_KEYS.get(op, {})})) for op in Op}
    assert {op: request.op for op, request in decoded.items()} == {op: op for op in Op}
    assert len({type(request) for request in decoded.values()}) == len(Op)


# --------------------------------------------------------------------------
# Every kind of bad input.


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",
        b"\x82\xa2op",
        b"\x81\xa2op\xa4ping\x00",
        b"\xd6\xff\x00",
        b"\x81\xa2op\xa1\x80",
        b"\x82\xa2op\xa4ping\xa2id\xa1\x80",
    ],
    ids=[
        "empty",
        "invalid-opcode",
        "truncated",
        "trailing-bytes",
        "truncated-ext",
        "bad-utf8-value",
        "bad-utf8-id",
    ],
)
def test_not_msgpack_is_bad_request(frame: bytes) -> None:
    error = request_error(frame)
    assert error.code is ErrorCode.BAD_REQUEST
    assert error.message.startswith("not valid MessagePack")
    assert error.request_id is NO_ID


@pytest.mark.parametrize("value", [[1, 2], "ping", 1, None, True, b"op"])
def test_not_a_map_is_bad_request(value: Any) -> None:
    error = request_error(pack(value))
    assert (error.code, error.message) == (
        ErrorCode.BAD_REQUEST,
        "request must be a MessagePack map",
    )


def test_non_string_keys_are_bad_request() -> None:
    error = request_error(pack({"op": "ping", 1: 2}))
    assert (error.code, error.message) == (ErrorCode.BAD_REQUEST, "request keys must be strings")


def test_missing_op_is_bad_request_with_id() -> None:
    error = request_error(pack({"id": 5, "addr": "a"}))
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.BAD_REQUEST,
        "missing required key 'op'",
        5,
    )


@pytest.mark.parametrize(("op", "kind"), [(1, "int"), (None, "nil"), (["ping"], "array")])
def test_op_of_wrong_type_is_bad_request(op: Any, kind: str) -> None:
    error = request_error(pack({"op": op, "id": "x"}))
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.BAD_REQUEST,
        f"key 'op' must be str, got {kind}",
        "x",
    )


@pytest.mark.parametrize(
    ("op", "missing"),
    [
        ("notify_failed_server", "addr"),
        ("add_primary_server", "addr"),
        ("remove_server", "addr"),
        ("set_backup_servers", "addrs"),
        ("heartbeat", "servers"),
    ],
)
def test_required_key_missing_is_bad_request(op: str, missing: str) -> None:
    error = request_error(pack({"op": op, "id": 1}))
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.BAD_REQUEST,
        f"missing required key {missing!r}",
        1,
    )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"op": "remove_server", "addr": 4647}, "key 'addr' must be str, got int"),
        ({"op": "remove_server", "addr": None}, "key 'addr' must be str, got nil"),
        ({"op": "remove_server", "addr": b"a"}, "key 'addr' must be str, got bin"),
        ({"op": "remove_server", "addr": {}}, "key 'addr' must be str, got map"),
        ({"op": "set_backup_servers", "addrs": "a,b"}, "key 'addrs' must be array, got str"),
        ({"op": "set_backup_servers", "addrs": ["a", 2]}, "key 'addrs[1]' must be str, got int"),
        (
            {"op": "heartbeat", **heartbeat_keys(num_nodes="3")},
            "key 'num_nodes' must be int, got str",
        ),
    ],
)
def test_key_of_wrong_type_is_bad_request(keys: dict[str, Any], message: str) -> None:
    error = request_error(pack({**keys, "id": 2}))
    assert (error.code, error.message, error.request_id) == (ErrorCode.BAD_REQUEST, message, 2)


def test_too_many_addresses_is_bad_request() -> None:
    frame = pack({"op": "set_backup_servers", "addrs": ["a"] * (DEFAULT_MAX_SERVERS + 1)})
    error = request_error(frame)
    assert error.code is ErrorCode.BAD_REQUEST
    assert "addrs" in error.message


def test_the_largest_allowed_address_list_decodes() -> None:
    names = [f"s{i}.nomad" for i in range(DEFAULT_MAX_SERVERS)]
    request = decode_request(pack({"op": "set_backup_servers", "addrs": names}))
    assert isinstance(request, SetBackupsRequest)
    assert len(request.addrs) == DEFAULT_MAX_SERVERS


def _servers(count: int) -> list[dict[str, Any]]:
    return [entry(f"10.0.0.{i % 250 + 1}:{4000 + i}") for i in range(count)]


def test_a_decoder_bounds_lists_by_its_max_servers() -> None:
    # max_servers (docs/protocol.md section 8) flows into the wire types: one more
    # than it is bad_request (requests) or dropped whole (heartbeats, rule 1).
    decoder = Decoder(max_servers=3)
    backups = decode_request(pack({"op": "set_backup_servers", "addrs": ["a", "b", "c"]}), decoder)
    assert isinstance(backups, SetBackupsRequest) and len(backups.addrs) == 3
    with pytest.raises(RequestError) as info:
        decode_request(
            pack({"op": "set_backup_servers", "addrs": ["a", "b", "c", "d"], "id": 9}), decoder
        )
    assert (info.value.code, info.value.request_id) == (ErrorCode.BAD_REQUEST, 9)
    assert info.value.message == "key 'addrs' must be array of length <= 3"

    assert len(decoder.heartbeat(pack(heartbeat_keys(servers=_servers(3)))).servers) == 3
    with pytest.raises(HeartbeatError, match=r"key 'servers' must be array of length <= 3"):
        decoder.heartbeat(pack(heartbeat_keys(servers=_servers(4))))

    op = decode_request(pack({"op": "heartbeat", **heartbeat_keys(servers=_servers(3))}), decoder)
    assert isinstance(op, HeartbeatRequest) and len(op.heartbeat.servers) == 3
    with pytest.raises(RequestError) as info:
        decode_request(pack({"op": "heartbeat", **heartbeat_keys(servers=_servers(4))}), decoder)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "servers" in info.value.message


def test_a_larger_max_servers_accepts_longer_lists() -> None:
    count = DEFAULT_MAX_SERVERS + 1
    decoder = Decoder(max_servers=count)
    assert len(decoder.heartbeat(pack(heartbeat_keys(servers=_servers(count)))).servers) == count
    names = [f"s{i}.nomad" for i in range(count)]
    request = decode_request(pack({"op": "set_backup_servers", "addrs": names}), decoder)
    assert isinstance(request, SetBackupsRequest) and len(request.addrs) == count
    # Decoders are independent: the default one still refuses that many.
    with pytest.raises(HeartbeatError):
        decode_heartbeat(pack(heartbeat_keys(servers=_servers(count))))


def test_a_decoder_answers_every_op_like_the_default_one() -> None:
    decoder = Decoder(max_servers=5)
    for op in sorted(OPS - {"heartbeat", "set_backup_servers", "set_servers"}):
        frame = pack({"op": op, "addr": "a", "id": op})
        assert decode_request(frame, decoder) == decode_request(frame)
    for listing in ("set_backup_servers", "set_servers"):
        frame = pack({"op": listing, "addrs": ["a", "b"], "id": listing})
        assert decode_request(frame, decoder) == decode_request(frame)
    with pytest.raises(ValueError, match="at least 1"):
        Decoder(max_servers=0)


def test_nesting_too_deep_in_an_extra_key_is_bad_request() -> None:
    frame = b"\x82\xa2op\xa4ping\xa1x" + DEEP
    error = request_error(frame)
    assert (error.code, error.message) == (ErrorCode.BAD_REQUEST, "nesting too deep")


def test_nesting_too_deep_in_the_id_is_bad_request() -> None:
    error = request_error(b"\x82\xa2op\xa4ping\xa2id" + DEEP)
    assert (error.code, error.message) == (ErrorCode.BAD_REQUEST, "nesting too deep")


def test_nested_maps_too_deep_are_bad_request() -> None:
    error = request_error(b"\x82\xa2op\xa4ping\xa1x" + b"\x81\xa1k" * 100_000 + b"\xc0")
    assert (error.code, error.message) == (ErrorCode.BAD_REQUEST, "nesting too deep")


def test_a_huge_declared_length_is_bad_request_not_an_allocation() -> None:
    error = request_error(b"\x82\xa2op\xa4ping\xa2id\xdd\xff\xff\xff\xff")
    assert error.code is ErrorCode.BAD_REQUEST


def test_unknown_op_names_the_op_and_echoes_the_id() -> None:
    error = request_error(pack({"op": "frob", "id": 11}))
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.UNKNOWN_OP,
        "op 'frob' is not an operation",
        11,
    )


def test_unknown_op_message_is_bounded() -> None:
    error = request_error(pack({"op": "x" * 100_000}))
    assert error.code is ErrorCode.UNKNOWN_OP
    assert len(error.message) < 120


@pytest.mark.parametrize(
    ("v", "shown"),
    [(2, "2"), (0, "0"), (-1, "-1"), (True, "True"), ("1", "'1'"), (1.0, "1.0"), (None, "None")],
)
def test_version_other_than_1_is_unsupported(v: Any, shown: str) -> None:
    error = request_error(pack({"op": "ping", "v": v, "id": 4}))
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.UNSUPPORTED_VERSION,
        f"`v` {shown} is not supported (this proxy speaks 1)",
        4,
    )


def test_version_is_checked_before_the_op() -> None:
    error = request_error(pack({"op": "frob", "v": 2}))
    assert error.code is ErrorCode.UNSUPPORTED_VERSION


def test_op_is_checked_before_its_keys() -> None:
    error = request_error(pack({"op": "frob", "addr": 3}))
    assert error.code is ErrorCode.UNKNOWN_OP


def test_version_is_checked_before_the_op_keys() -> None:
    error = request_error(pack({"op": "remove_server", "v": 2}))
    assert error.code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("op", ["notify_failed_server", "add_primary_server", "remove_server"])
@pytest.mark.parametrize(
    "addr", ["", "a:0", "a:65536", "a:b", "::1", "[::1", "bad host", "x" * 400]
)
def test_bad_address_is_invalid_address(op: str, addr: str) -> None:
    error = request_error(pack({"op": op, "addr": addr, "id": 8}))
    assert (error.code, error.request_id) == (ErrorCode.INVALID_ADDRESS, 8)
    assert len(error.message) < 200


def test_one_bad_backup_address_names_it() -> None:
    error = request_error(pack({"op": "set_backup_servers", "addrs": ["a", "b:99999", "c"]}))
    assert error.code is ErrorCode.INVALID_ADDRESS
    assert error.message.startswith("addrs[1]: ")
    assert "b:99999" in error.message


def test_encode_request_error_echoes_the_id() -> None:
    error = request_error(pack({"op": "frob", "id": [1]}))
    assert unpack(encode_request_error(error)) == {
        "ok": False,
        "error": {"code": "unknown_op", "message": "op 'frob' is not an operation"},
        "id": [1],
    }


# --------------------------------------------------------------------------
# Heartbeat payloads (section 2's table, rule 1).


def test_heartbeat_payload_decodes() -> None:
    assert decode_heartbeat(pack(heartbeat_keys())) == Heartbeat(
        servers=(
            HeartbeatServer("10.0.0.1", 1, 1, "dc1"),
            HeartbeatServer("10.0.0.2:4000", 1, 1, "dc2"),
        ),
        num_nodes=12,
        leader_rpc_addr="10.0.0.1:4647",
    )


def test_heartbeat_may_be_empty_and_leaderless() -> None:
    heartbeat = decode_heartbeat(pack(heartbeat_keys(servers=[], leader_rpc_addr="")))
    assert (heartbeat.servers, heartbeat.leader_rpc_addr) == ((), "")


def test_heartbeat_ignores_unknown_keys_and_keeps_bad_addresses() -> None:
    payload = heartbeat_keys(servers=[{**entry("not an address"), "extra": 1}], region="global")
    assert decode_heartbeat(pack(payload)).servers[0].rpc_advertise_addr == "not an address"


def test_heartbeat_publisher_and_seq_are_optional() -> None:
    heartbeat = decode_heartbeat(pack(heartbeat_keys(publisher="p", seq=-3)))
    assert (heartbeat.publisher, heartbeat.seq) == ("p", -3)


@pytest.mark.parametrize("key", ["servers", "num_nodes", "leader_rpc_addr"])
def test_heartbeat_missing_top_level_key_is_dropped(key: str) -> None:
    payload = heartbeat_keys()
    del payload[key]
    with pytest.raises(HeartbeatError, match=f"missing required key '{key}'"):
        decode_heartbeat(pack(payload))


@pytest.mark.parametrize(
    "key", ["rpc_advertise_addr", "rpc_major_version", "rpc_minor_version", "datacenter"]
)
def test_heartbeat_missing_entry_key_is_dropped(key: str) -> None:
    server = entry()
    del server[key]
    with pytest.raises(HeartbeatError, match=rf"missing required key '{key}' in servers\[1\]"):
        decode_heartbeat(pack(heartbeat_keys(servers=[entry(), server])))


@pytest.mark.parametrize(
    "payload",
    [
        heartbeat_keys(servers={"a": 1}),
        heartbeat_keys(servers=[1]),
        heartbeat_keys(servers=None),
        heartbeat_keys(num_nodes=1.5),
        heartbeat_keys(num_nodes=True),
        heartbeat_keys(num_nodes="3"),
        heartbeat_keys(leader_rpc_addr=None),
        heartbeat_keys(leader_rpc_addr=1),
        heartbeat_keys(servers=[{**entry(), "rpc_advertise_addr": 1}]),
        heartbeat_keys(servers=[{**entry(), "rpc_major_version": "1"}]),
        heartbeat_keys(servers=[{**entry(), "rpc_minor_version": 1.0}]),
        heartbeat_keys(servers=[{**entry(), "datacenter": None}]),
        heartbeat_keys(publisher=7),
        heartbeat_keys(seq="1"),
    ],
)
def test_heartbeat_key_of_wrong_type_is_dropped(payload: dict[str, Any]) -> None:
    with pytest.raises(HeartbeatError, match="must be"):
        decode_heartbeat(pack(payload))


def test_heartbeat_negative_num_nodes_is_dropped() -> None:
    with pytest.raises(HeartbeatError, match="num_nodes"):
        decode_heartbeat(pack(heartbeat_keys(num_nodes=-1)))


def test_heartbeat_with_too_many_servers_is_dropped() -> None:
    with pytest.raises(HeartbeatError, match="servers"):
        decode_heartbeat(pack(heartbeat_keys(servers=[entry()] * (DEFAULT_MAX_SERVERS + 1))))


@pytest.mark.parametrize("payload", [b"\xc1", pack([1]), DEEP, b"\x81\xa1k" * 100_000 + b"\xc0"])
def test_heartbeat_that_is_not_a_msgpack_map_is_dropped(payload: bytes) -> None:
    with pytest.raises(HeartbeatError):
        decode_heartbeat(payload)


def test_heartbeat_op_shares_the_payload_rules() -> None:
    error = request_error(pack({"op": "heartbeat", **heartbeat_keys(num_nodes=-1)}))
    assert (error.code, error.message) == (
        ErrorCode.BAD_REQUEST,
        "key 'num_nodes' must be int >= 0",
    )


# --------------------------------------------------------------------------
# Encoders, read back with msgpack.


def server_obj(addr: Any) -> Any:
    """A reply's server object as the wire has it (a map, or nil)."""
    return msgspec.to_builtins(server_of(addr))


def test_encode_ok_with_and_without_id() -> None:
    server = server_obj(parse_address("10.0.0.1"))
    assert unpack(encode_ok(9, server=server)) == {
        "ok": True,
        "id": 9,
        "server": {"addr": "10.0.0.1:4647"},
    }
    assert unpack(encode_ok(NO_ID, server=None)) == {"ok": True, "server": None}
    assert unpack(encode_ok(None, pong=True)) == {"ok": True, "id": None, "pong": True}


def test_encode_ok_status_shape() -> None:
    servers = [server_obj(parse_address(a)) for a in ("a", "[::1]:80")]
    reply = unpack(
        encode_ok(
            "s",
            servers=servers,
            primary=servers[:1],
            backup=servers[1:],
            leader_addr="",
            num_nodes=0,
            num_servers=2,
            next_rebalance_s=1.5,
        )
    )
    assert reply["servers"] == [{"addr": "a:4647"}, {"addr": "[::1]:80"}]
    assert reply["next_rebalance_s"] == 1.5


def test_encode_error_with_and_without_id() -> None:
    assert unpack(encode_error(ErrorCode.UNAVAILABLE, "shutting down", "r1")) == {
        "ok": False,
        "error": {"code": "unavailable", "message": "shutting down"},
        "id": "r1",
    }
    assert unpack(encode_error(ErrorCode.BAD_REQUEST, "no")) == {
        "ok": False,
        "error": {"code": "bad_request", "message": "no"},
    }


def test_server_obj() -> None:
    assert server_obj(None) is None
    assert server_obj(parse_address("[0::1]")) == {"addr": "[::1]:4647"}


def test_encode_event() -> None:
    assert unpack(encode_event(parse_address("b.nomad"), "failed", 7, "0123abcd")) == {
        "server": {"addr": "b.nomad:4647"},
        "reason": "failed",
        "epoch": 7,
        "instance": "0123abcd",
    }
    assert unpack(encode_event(None, "refresh", 0, "x")) == {
        "server": None,
        "reason": "refresh",
        "epoch": 0,
        "instance": "x",
    }


def test_instance_ids_are_random_hex() -> None:
    ids = {new_instance_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_encode_heartbeat_reads_back_equal() -> None:
    heartbeat = Heartbeat(
        servers=(HeartbeatServer("10.0.0.1", 1, 2, "dc1"), HeartbeatServer("x", 3, 0, "dc9")),
        num_nodes=40,
        leader_rpc_addr="10.0.0.1:4647",
        publisher="pub",
        seq=2,
    )
    payload = encode_heartbeat(heartbeat)
    assert unpack(payload)["servers"][1] == entry("x", dc="dc9", major=3, minor=0)
    assert decode_heartbeat(payload) == heartbeat


def test_encode_heartbeat_omits_absent_publisher_and_seq() -> None:
    payload = unpack(encode_heartbeat(Heartbeat((), 0, "")))
    assert payload == {"servers": [], "num_nodes": 0, "leader_rpc_addr": ""}


# --------------------------------------------------------------------------
# Fuzz: nothing but the documented errors ever escapes.

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(sorted(OPS))
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["op", "v", "id", "addr"]), children
        )
    ),
    max_leaves=20,
)
_requests = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS)) | _scalars},
    optional={
        "v": st.sampled_from([1, 2, True, "1"]) | _scalars,
        "id": _values,
        "addr": st.text(max_size=30) | _scalars,
        "addrs": st.lists(st.text(max_size=30), max_size=4) | _values,
        "servers": st.lists(
            st.fixed_dictionaries(
                {
                    "rpc_advertise_addr": st.text(max_size=20),
                    "rpc_major_version": st.integers(-2, 3),
                    "rpc_minor_version": st.integers(-2, 3),
                    "datacenter": st.text(max_size=5),
                }
            )
            | _values,
            max_size=3,
        )
        | _values,
        "num_nodes": st.integers(-2, 10) | _scalars,
        "leader_rpc_addr": st.text(max_size=10) | _scalars,
        "seq": _scalars,
        "publisher": _scalars,
    },
)


def _read_reply(body: bytes) -> Any:
    # The reply echoes the request's id as the peer sent it, which may be an
    # ext value of a reserved (negative) type: valid MessagePack, and what
    # the clients' msgspec decoder reads, but msgpack-python refuses it.
    return msgspec.msgpack.decode(body)


def _decode_and_reply(frame: bytes) -> None:
    """What the query server does: decode, and always be able to reply."""
    try:
        request = decode_request(frame)
    except RequestError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert exc.message
        _read_reply(encode_request_error(exc))
    else:
        assert _read_reply(encode_ok(request.id))["ok"] is True


def test_a_reserved_ext_id_is_echoed_in_a_reply_the_clients_can_read() -> None:
    # Found by the fuzzer: fixext16 of type -128 where the id was.
    frame = b"\x83\xa2op\xa4ping\xa1v\x01\xa2id\xd8\x80" + bytes(16)
    reply = _read_reply(encode_ok(decode_request(frame).id))
    assert reply["ok"] is True
    assert reply["id"] == msgspec.msgpack.Ext(-128, bytes(16))


def _decode_heartbeat_or_drop(payload: bytes) -> None:
    try:
        decode_heartbeat(payload)
    except HeartbeatError as exc:
        assert str(exc)


_FUZZ = settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@_FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(frame: bytes) -> None:
    _decode_and_reply(frame)
    _decode_heartbeat_or_drop(frame)


@_FUZZ
@given(_values)
def test_fuzz_arbitrary_msgpack_values(value: Any) -> None:
    _decode_and_reply(pack(value))
    _decode_heartbeat_or_drop(pack(value))


@_FUZZ
@given(_requests)
def test_fuzz_request_shaped_maps(value: dict[str, Any]) -> None:
    _decode_and_reply(pack(value))
    _decode_heartbeat_or_drop(pack(value))


@_FUZZ
@given(st.binary(min_size=1, max_size=100), st.integers(0, 99), _requests)
def test_fuzz_corrupted_requests(noise: bytes, at: int, value: dict[str, Any]) -> None:
    frame = pack(value)
    at = at % len(frame)
    _decode_and_reply(frame[:at] + noise + frame[at + len(noise) :])
