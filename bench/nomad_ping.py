"""A Nomad ``Status.Ping``'s cost against the Go reference peer, side by side
with the Go client built from the libraries Nomad uses (issue 11).

One peer (tests/nomad_peer/, Go's ``net/rpc`` with hashicorp's msgpackrpc
codec, Go's ``crypto/tls``) answers three clients in alternating rounds, each
pinging it the way a rebalance does: a new connection per ping (connect, with
TLS ``0x04`` and the handshake, ``0x01``, the request, the reply, close).

- **ours**: :class:`bus.service.nomad_ping.NomadProber`, the product's prober,
  called with one candidate per call as ProberActor calls it, so every ping
  pays the windowed engine's whole set-up (its poller, waker and deadline).
  With TLS it offers the server's last session, so from the second ping on
  the handshake resumes (the peer counts ``DidResume`` to show it does).
- **ours, no resumption** (TLS only): the same prober with
  ``max_tls_sessions=0``, a full handshake per ping, as before issue 20.
- **Go**: the peer binary's client mode (``-call -conn-per-call``),
  ``msgpackrpc.CallWithCodec`` on Nomad's handle over a fresh connection per
  call, with no ``ClientSessionCache`` in its TLS config (so it never
  resumes). It times its own loop (the clock starts after flag parsing and TLS
  set-up, stops after the last close), so process start is not in its figure.
- **raw Python**: the same bytes on a blocking socket with the project's own
  framing and reply check, no engine and no resumption: how much of
  ours-over-Go is the engine and how much the interpreter.
"""

from __future__ import annotations

import cProfile
import pstats
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import Result, Spread, percentile

from rpcproxy.bus.probes import NomadProber, NomadTls, load_tls
from rpcproxy.bus.probes.msgpackrpc import RPC_NOMAD, RPC_TLS, encode_request
from rpcproxy.bus.probes.nomad import ReplyCheck
from rpcproxy.proxy import Address
from tests.nomadpeer import NomadPeer, TLSFiles, go_ping, make_tls_files

PING_TIMEOUT_S = 5.0
"""Far above any ping here: a timeout would be a failure, not a figure."""
WARMUP_PINGS = 50
TLS_TARGET = 1.0
"""Issue 20: a TLS ping of ours, resumed, costs no more than Go's client's."""


@dataclass
class _Side:
    """One client's rounds: per-ping mean of each round, and per-ping times."""

    means_us: list[float]
    p50s_us: list[float]
    p99s_us: list[float]

    @classmethod
    def empty(cls) -> _Side:
        return cls([], [], [])

    def add(self, mean_us: float, each_us: list[float] | None = None) -> None:
        self.means_us.append(mean_us)
        if each_us:
            ordered = sorted(each_us)
            self.p50s_us.append(percentile(ordered, 0.50))
            self.p99s_us.append(percentile(ordered, 0.99))


def _timed(count: int, ping: Callable[[], bool]) -> tuple[float, list[float]]:
    """Run ``ping`` ``count`` times; the loop's mean and each ping, in µs."""
    each: list[float] = []
    begin = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        if not ping():
            raise RuntimeError("a ping to the Go peer failed")
        each.append((time.perf_counter() - start) * 1e6)
    mean = (time.perf_counter() - begin) * 1e6 / count
    return mean, each


def _raw_ping(host_port: tuple[str, int], seq: int, tls: NomadTls | None) -> bool:
    """One ping on a blocking socket: the product's bytes without its engine."""
    return _raw_exchange(host_port, seq, tls)[0]


def _raw_exchange(
    host_port: tuple[str, int], seq: int, tls: NomadTls | None
) -> tuple[bool, ssl.SSLSession | None]:
    """:func:`_raw_ping`, and with TLS the session it ended with (the reply read, so
    a TLS 1.3 server's ticket is in it)."""
    sock = socket.create_connection(host_port, timeout=PING_TIMEOUT_S)
    try:
        if tls is not None:
            sock.sendall(RPC_TLS)
            sock = tls.context.wrap_socket(sock, server_hostname=tls.server_hostname)
        sock.sendall(RPC_NOMAD + encode_request(seq))
        check = ReplyCheck(seq)
        while True:
            data = sock.recv(4096)
            if not data:
                return False, None
            verdict = check.feed(data)
            if verdict is not None:
                session = sock.session if isinstance(sock, ssl.SSLSocket) else None
                return verdict, session
    finally:
        sock.close()


def _session_offer_us(peer: NomadPeer, tls: NomadTls, count: int) -> tuple[float, float]:
    """A new client SSL object without and with a session to offer, µs each.

    The prober's ``wrap_socket`` takes its session the same way: CPython's
    setter copies it through its DER form, parsing the server's certificate
    again, and that copy, not the SSL object, is what a resumed ping pays.
    """
    _, session = _raw_exchange(peer.host_port, 1, tls)
    if session is None or not session.has_ticket:
        raise RuntimeError("the Go peer sent no TLS session ticket")
    spent: list[float] = []
    for offered in (None, session):
        begin = time.perf_counter()
        for _ in range(count):
            tls.context.wrap_bio(
                ssl.MemoryBIO(),
                ssl.MemoryBIO(),
                server_hostname=tls.server_hostname,
                session=offered,
            )
        spent.append((time.perf_counter() - begin) * 1e6 / count)
    return spent[0], spent[1]


@dataclass
class _Sides:
    """Every client's rounds against one peer."""

    ours: _Side
    go: _Side
    raw: _Side
    ours_no_resume: _Side | None
    """TLS only: ours with ``max_tls_sessions=0``."""


def _client_tls(tls: TLSFiles) -> NomadTls:
    """The prober's TLS with the peer's CA and client certificate."""
    return load_tls(
        ca_file=str(tls.ca),
        cert_file=str(tls.client.cert),
        key_file=str(tls.client.key),
        region=tls.region,
    )


def _measure(peer: NomadPeer, tls: TLSFiles | None, rounds: int, pings: int) -> _Sides:
    nomad_tls = None if tls is None else _client_tls(tls)
    host, port = peer.host_port
    addr = Address(host, port)
    ours, go, raw = _Side.empty(), _Side.empty(), _Side.empty()
    no_resume = None if tls is None else _Side.empty()
    seqs = iter(range(1, 1 << 62))
    with (
        NomadProber(timeout_s=PING_TIMEOUT_S, tls=nomad_tls) as prober,
        NomadProber(timeout_s=PING_TIMEOUT_S, tls=nomad_tls, max_tls_sessions=0) as full,
    ):

        def ours_once() -> bool:
            return prober([addr]).get(addr, False)

        def full_once() -> bool:
            return full([addr]).get(addr, False)

        def raw_once() -> bool:
            return _raw_ping(peer.host_port, next(seqs), nomad_tls)

        def run_ours() -> None:
            ours.add(*_timed(pings, ours_once))

        def run_go() -> None:
            go.add(float(go_ping(peer.address, pings, conn_per_call=True, tls=tls)["per_call_us"]))

        def run_raw() -> None:
            raw.add(*_timed(pings, raw_once))

        def run_full() -> None:
            assert no_resume is not None
            no_resume.add(*_timed(pings, full_once))

        # Warm-up: the peer's goroutines and TLS session state, our imports
        # and the engine's first poller; none of it is counted.
        _timed(WARMUP_PINGS, ours_once)
        _timed(WARMUP_PINGS, raw_once)
        go_ping(peer.address, WARMUP_PINGS, conn_per_call=True, tls=tls)
        sides = [run_ours, run_go, run_raw]
        if no_resume is not None:
            _timed(WARMUP_PINGS, full_once)
            sides.append(run_full)
        for index in range(rounds):
            # Each round starts with another client, so none always runs
            # first (or last) after the others' connections went to TIME_WAIT.
            shift = index % len(sides)
            for run in sides[shift:] + sides[:shift]:
                run()
            extra = (
                ""
                if no_resume is None
                else f", ours without resumption {no_resume.means_us[-1]:.0f} us"
            )
            print(
                f"  {peer.mode} round {index + 1}/{rounds}: ours {ours.means_us[-1]:.0f} us,"
                f" Go {go.means_us[-1]:.0f} us, raw Python {raw.means_us[-1]:.0f} us{extra}",
                flush=True,
            )
    return _Sides(ours, go, raw, no_resume)


def _profile_resumed(peer: NomadPeer, tls: TLSFiles, pings: int) -> str:
    """Where a resumed ping of ours spends its time, from cProfile: what the
    note says when the TLS target is not met (issue 20's rule)."""
    nomad_tls = _client_tls(tls)
    host, port = peer.host_port
    addr = Address(host, port)
    profile = cProfile.Profile()
    with NomadProber(timeout_s=PING_TIMEOUT_S, tls=nomad_tls) as prober:
        prober([addr])  # The full handshake; every later one resumes.
        begin = time.perf_counter()
        profile.enable()
        for _ in range(pings):
            prober([addr])
        profile.disable()
        wall_us = (time.perf_counter() - begin) * 1e6 / pings
    parts = {"handshake": 0.0, "wrap": 0.0, "poll": 0.0}
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _, name), (_, _, own_s, _, _) in stats.items():
        if "do_handshake" in name:
            parts["handshake"] += own_s
        elif "_wrap_socket" in name:
            parts["wrap"] += own_s
        elif name == "poll" and filename.endswith("poll.py"):
            parts["poll"] += own_s
    per = {key: value * 1e6 / pings for key, value in parts.items()}
    rest = wall_us - sum(per.values())
    bare_us, offered_us = _session_offer_us(peer, nomad_tls, pings)
    return (
        f"Profile of {pings} resumed pings of ours (cProfile on, so slower than the rounds):"
        f" {wall_us:.0f} us each, of which OpenSSL's handshake (`do_handshake`, the client"
        f" side of a resumed TLS 1.3 handshake with its key exchange) {per['handshake']:.0f} us,"
        f" `SSLContext.wrap_socket` with the offered session {per['wrap']:.0f} us, waiting in"
        f" poll for the peer {per['poll']:.0f} us, and the rest (connect, close, the engine,"
        f" the reply, and cProfile's own cost) {rest:.0f} us. Timed alone, a new client SSL"
        f" object takes {bare_us:.0f} us without a session and {offered_us:.0f} us with one:"
        " CPython's session setter copies the session through its DER form (the server's"
        " certificate parsed again), a cost of the standard library's `ssl` on every resumed"
        " handshake that Go's client, which never resumes, does not pay."
    )


def _rows(result: Result, mode: str, sides: _Sides) -> Spread:
    def pct(values: list[float]) -> str:
        return Spread.of(values).fmt(0) if values else "-"

    def per_round(side: _Side) -> Spread:
        return Spread.of([s / g for s, g in zip(side.means_us, sides.go.means_us, strict=True)])

    label = {"plain": "plain (0x01)", "tls": "mTLS (0x04, handshake, 0x01)"}[mode]
    named = [
        ("ours: NomadProber, one candidate per call", sides.ours),
        ("Go: msgpackrpc.CallWithCodec, -conn-per-call", sides.go),
        ("raw Python: blocking socket, same bytes", sides.raw),
    ]
    if sides.ours_no_resume is not None:
        named.append(("ours without resumption (max_tls_sessions=0)", sides.ours_no_resume))
    for name, side in named:
        result.rows.append(
            [label, name, Spread.of(side.means_us).fmt(0), pct(side.p50s_us), pct(side.p99s_us)]
        )
    ratio = per_round(sides.ours)
    result.rows.append([label, "**ratio ours / Go**", ratio.fmt(2), "", ""])
    result.rows.append([label, "ratio raw Python / Go", per_round(sides.raw).fmt(2), "", ""])
    if sides.ours_no_resume is not None:
        result.rows.append(
            [
                label,
                "ratio ours without resumption / Go",
                per_round(sides.ours_no_resume).fmt(2),
                "",
                "",
            ]
        )
    return ratio


def nomad_ping(rounds: int, plain_pings: int, tls_pings: int) -> Result:
    """Per-ping cost of ours, the Go client and raw Python, plain and mTLS."""
    result = Result(
        "Nomad Status.Ping against the Go peer, ours vs the Go client (issues 11, 20)",
        ["transport", "client", "per ping (us)", "p50 (us)", "p99 (us)"],
    )
    ratios: dict[str, Spread] = {}
    with NomadPeer() as peer:
        ratios["plain"] = _rows(result, "plain", _measure(peer, None, rounds, plain_pings))
    with tempfile.TemporaryDirectory(prefix="rpcproxy-bench-tls-") as directory:
        tls = make_tls_files(Path(directory))
        # The peer logs DidResume per handshake: only ours resumes (Go's
        # client and raw Python keep no session), so the resumed count is
        # how many of ours' handshakes resumed.
        with NomadPeer("tls", tls, report_resumption=True) as peer:
            ratios["tls"] = _rows(result, "tls", _measure(peer, tls, rounds, tls_pings))
            handshakes = peer.tls_handshakes()
            profile = _profile_resumed(peer, tls, tls_pings)
    resumed = sum(handshakes)
    ours_handshakes = rounds * tls_pings + WARMUP_PINGS
    result.notes.append(
        f"{rounds} rounds per transport, each of {plain_pings} pings plain and {tls_pings}"
        " with mTLS per client, the three clients in rotating order within a round (after"
        f" {WARMUP_PINGS} uncounted pings each), all against one Go peer"
        " (tests/nomad_peer/, `net/rpc` + hashicorp/net-rpc-msgpackrpc + go-msgpack,"
        " Go's crypto/tls with required client certificates). Every ping is a new"
        " connection: connect, (0x04 and a TLS handshake, P-256 certificates, server name"
        " `server.global.nomad` checked,) 0x01, request, reply, close, as a rebalance pings."
        " Per ping = a round's wall time / its pings, median over rounds (min-max); the"
        " ratio is taken per round. p50/p99: over each round's pings, median over rounds"
        " (min-max). The Go client times its own loop after start-up and TLS set-up and"
        " prints only the mean, so it has no percentiles. Ours is the product's prober"
        " (`ping_method = nomad`) called with one candidate, as ProberActor calls it; raw"
        " Python is the same bytes and reply check on a blocking socket, without the"
        " windowed engine. With TLS ours offers each server's last session (TLS 1.3"
        " ticket), so its handshakes resume; Go's client has no"
        f" session cache. The peer saw {resumed} of {len(handshakes)} handshakes resume"
        f" (ours made {ours_handshakes}, the first a full one; nobody else resumes)."
        " 'ours without resumption' is the same prober with `max_tls_sessions=0`. " + profile
    )
    # Plain has no target: the figure says how far ours is from Go's client.
    result.report(f"plain: per ping, ours / Go {ratios['plain'].fmt(2)}")
    result.check(
        f"tls: per ping, ours (resumed) / Go {ratios['tls'].fmt(2)}",
        f"<= {TLS_TARGET}",
        ratios["tls"].median <= TLS_TARGET,
    )
    result.check(
        f"tls: handshakes of ours resumed {resumed} of {ours_handshakes}",
        f">= {ours_handshakes - 1}",
        resumed >= ours_handshakes - 1,
    )
    noisy = [mode for mode, ratio in ratios.items() if ratio.high > 1.5 * ratio.low]
    if noisy:
        result.notes.append(
            f"\n**Noisy:** per-round ratios vary by more than 1.5x ({', '.join(noisy)});"
            " other load on the machine (see the load average) is in them."
        )
    medians = ", ".join(f"{mode} {r.median:.2f}" for mode, r in ratios.items())
    print(f"  ratio ours / Go: {medians}", flush=True)
    return result
