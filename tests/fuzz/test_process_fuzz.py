"""Fuzzing the real ``rpcproxy serve``: every op, raw frames and the heartbeat socket.

One proxy process (with a state file, so the persister sees every state too)
serves the whole module. For each input: a reply always comes, a rejected
input gets an error with a protocol code and leaves the state (``status``
without its clocks) exactly as it was, and the proxy keeps answering. At the
end it must stop on SIGTERM with exit 0 and no ERROR line or traceback in its
log.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings, target
from hypothesis import strategies as st

from rpcproxy.bus.service.codec import HeartbeatError, decode_heartbeat
from rpcproxy.proxy import Heartbeat
from tests.helpers import pack, unpack
from tests.integration.serving import (
    HeartbeatPub,
    Serve,
    hb_payload,
    hb_server,
    start_serve,
    stop_and_check,
)
from tests.waiting import poll_until

from ._branches import Branches
from ._strategies import (
    OPS,
    fuzz_settings,
    heartbeat_frames,
    raw_frames,
    request_maps,
)

pytestmark = pytest.mark.integration

CODES = {"bad_request", "unknown_op", "invalid_address", "unsupported_version", "unavailable"}
READ_ONLY = {"ping", "find_server", "servers", "status"}
MAX_SERVERS = 12
"""Past this many servers the state is emptied, so status stays small and fast."""
MARKER = "fuzz-marker-publisher"
TOPIC = b"heartbeat/global"


class Proxy:
    """The serve process and the last state seen, so each input costs one status."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.last = serve.state()
        self.replies = 0
        self.errors = 0

    def exchange(self, frame: bytes) -> dict[str, Any]:
        """Send one request frame; check the reply and the state around it."""
        before = self.last
        reply = unpack(self.serve.client.send_raw(frame, timeout=10.0))
        assert isinstance(reply, dict), reply
        assert isinstance(reply.get("ok"), bool), reply
        self.replies += 1
        after = self.serve.state()
        if reply["ok"] is False:
            self.errors += 1
            error = reply["error"]
            event(f"error code {error['code']}")
            assert error["code"] in CODES, reply
            assert isinstance(error["message"], str) and error["message"], reply
            assert after == before, f"rejected {frame[:200]!r} changed the state"
        self.last = after
        self.shrink()
        return reply

    def shrink(self) -> None:
        if len(self.last["servers"]) > MAX_SERVERS:
            self.serve.call("heartbeat", servers=[], num_nodes=0, leader_rpc_addr="")
            self.serve.call("set_backup_servers", addrs=[])
            self.last = self.serve.state()
            assert self.last["servers"] == []


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    running = start_serve(
        directory,
        "--ping-timeout-s",
        "0.01",
        "--state-file",
        str(directory / "state.json"),
    )
    yield running
    assert running.call("ping")["pong"] is True
    stop_and_check(running)


@pytest.fixture(scope="module")
def proxy(serve: Serve) -> Proxy:
    serve.call("add_primary_server", addr="10.0.0.1")
    serve.call("add_primary_server", addr="[::1]:4648")
    serve.call("set_backup_servers", addrs=["a.nomad"])
    return Proxy(serve)


PROCESS_REQUESTS = Branches("process_requests", "refused", "read-only accepted", "write accepted")


@PROCESS_REQUESTS.each_taken
@fuzz_settings("process_requests")
@given(request_maps)
def test_every_op_with_fuzzed_keys(proxy: Proxy, message: dict[Any, Any]) -> None:
    reply = proxy.exchange(pack(message))
    if not reply["ok"]:
        PROCESS_REQUESTS.took("refused")
    elif message.get("op") in READ_ONLY:
        PROCESS_REQUESTS.took("read-only accepted")
        assert proxy.last == proxy.serve.state()
    else:
        PROCESS_REQUESTS.took("write accepted")


@fuzz_settings("process_frames")
@given(raw_frames)
def test_arbitrary_frames(proxy: Proxy, frame: bytes) -> None:
    proxy.exchange(frame)


PROCESS_OPS = Branches("process_ops", "refused", "accepted")


@PROCESS_OPS.each_taken
@fuzz_settings("process_ops")
@given(st.sampled_from(OPS), request_maps)
def test_each_op_with_another_ops_keys(proxy: Proxy, op: str, message: dict[Any, Any]) -> None:
    """Every op is reached, whatever the keys: a real op name with a mix of keys."""
    reply = proxy.exchange(pack({**message, "op": op}))
    PROCESS_OPS.took("accepted" if reply["ok"] else "refused")


# --------------------------------------------------------------------------
# The heartbeat socket: no reply, so a marker heartbeat shows each was handled.

MARKER_SERVERS = [
    hb_server("10.0.0.1"),
    hb_server("10.0.0.2:4647"),
    hb_server("[::1]:4648", datacenter="dc2"),
]


class HeartbeatFuzz:
    def __init__(self, proxy: Proxy, pub: HeartbeatPub) -> None:
        self.proxy = proxy
        self.pub = pub
        self.seq = itertools.count(1)
        self.view = self.mark()

    def mark(self) -> dict[str, Any]:
        """Publish the marker and wait until it is applied; the state, minus the marker."""
        seq = next(self.seq)
        marker = hb_payload(MARKER_SERVERS, num_nodes=3, leader="10.0.0.1:4647")
        self.pub.send(pack({**marker, "publisher": MARKER, "seq": seq}))

        def applied() -> dict[str, Any] | None:
            state = self.proxy.serve.state()
            seqs = {p["publisher"]: p["seq"] for p in state["publishers"]}
            return state if seqs.get(MARKER) == seq else None

        state = poll_until(applied, timeout=10.0, interval=0.001, what="the marker heartbeat")
        assert state is not None
        state["publishers"] = [p for p in state["publishers"] if p["publisher"] != MARKER]
        return state

    def send(self, frames: list[bytes]) -> None:
        before = self.view
        self.pub.send_frames(frames)
        after = self.mark()
        heartbeat = self.valid(frames)
        if heartbeat is None:
            HEARTBEAT_SOCKET.took("dropped")
            assert after == before, f"dropped heartbeat {frames!r:.300} changed the state"
        else:
            HEARTBEAT_SOCKET.took("valid")
            # Valid heartbeats with more servers change more: steer towards them.
            target(len(heartbeat.servers), label="servers in a valid heartbeat")
        self.view = after

    @staticmethod
    def valid(frames: list[bytes]) -> Heartbeat | None:
        """The heartbeat the proxy applies from ``frames``, or None if it drops them."""
        if len(frames) != 2 or frames[0] != TOPIC:
            return None
        try:
            return decode_heartbeat(frames[1])
        except HeartbeatError:
            return None


@pytest.fixture(scope="module")
def heartbeats(proxy: Proxy) -> Iterator[HeartbeatFuzz]:
    pub = HeartbeatPub(connect=proxy.serve.heartbeat)
    try:
        # PUB drops what it sends before the subscription arrives: repeat the first.
        first = hb_payload(MARKER_SERVERS, num_nodes=3, leader="10.0.0.1:4647")
        pub.publish_until(
            {**first, "publisher": MARKER, "seq": 0},
            lambda: any(p["publisher"] == MARKER for p in proxy.serve.call("status")["publishers"]),
        )
        yield HeartbeatFuzz(proxy, pub)
    finally:
        pub.close()


topics = st.one_of(
    st.just(TOPIC),
    st.just(TOPIC),
    st.just(TOPIC),
    st.sampled_from([b"heartbeat/", b"heartbeat/globalx", b"heartbeat/global/", b""]),
    st.binary(max_size=12).map(lambda suffix: TOPIC + suffix),
)
frame_lists = st.one_of(
    st.tuples(topics, heartbeat_frames).map(list),
    st.tuples(topics, raw_frames).map(list),
    st.lists(st.binary(max_size=20), min_size=1, max_size=4).map(lambda rest: [TOPIC, *rest]),
)


HEARTBEAT_SOCKET = Branches("process_heartbeat_socket", "valid", "dropped")


@HEARTBEAT_SOCKET.each_taken
@fuzz_settings("process_heartbeat_socket")
@given(frame_lists)
def test_heartbeat_socket(heartbeats: HeartbeatFuzz, frames: list[bytes]) -> None:
    heartbeats.send(frames)


FINAL_FUZZ_EXAMPLES = 60
"""The last test's own fuzz, outside the budget: it must not rely on the
module's other tests having run (it passes alone too)."""


def test_the_proxy_still_answers_after_the_fuzz(proxy: Proxy, heartbeats: HeartbeatFuzz) -> None:
    """Runs last in this module: after a fuzz of its own (and, in a full run,
    after the module's), the service is whole and consistent."""
    replies_before = proxy.replies
    sent: Counter[str] = Counter()

    @settings(fuzz_settings("process_requests"), max_examples=FINAL_FUZZ_EXAMPLES)
    @given(request_maps, raw_frames, frame_lists)
    def fuzz(message: dict[Any, Any], frame: bytes, frames: list[bytes]) -> None:
        proxy.exchange(pack(message))
        proxy.exchange(frame)
        # Each checker compares with the state it saw last: tell each what the
        # other changed.
        heartbeats.view = heartbeats.mark()
        heartbeats.send(frames)
        proxy.last = proxy.serve.state()
        sent["examples"] += 1

    fuzz()
    assert sent["examples"] >= FINAL_FUZZ_EXAMPLES // 2, sent
    assert proxy.replies >= replies_before + 2 * sent["examples"]
    serve = proxy.serve
    assert serve.proc.poll() is None
    assert serve.call("ping")["pong"] is True
    status = serve.call("status")
    members = {s["addr"] for s in status["primary"] + status["backup"]}
    servers = [s["addr"] for s in status["servers"]]
    assert len(servers) == len(set(servers)) and set(servers) == members
    assert proxy.replies > 0
