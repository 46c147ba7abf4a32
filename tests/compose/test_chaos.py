"""Chaos: servers and the publisher killed, paused and cut off at random while
clients look up, use and report servers, and a rebalancer keeps rebalancing.

The issue's acceptance, as checked here (the exact reading is in
:mod:`tests.compose.chaos`): no client is handed a server that has been dead
for longer than one ping timeout after a notify or a rebalance, and the proxy
never restarts.

Everything that is timed runs on the host, with ``time.monotonic()``: the
chaos driver (this test's thread), the client threads and the rebalancer
thread, all CURVE clients of the proxy's published query port. A client
"uses" a server with Nomad's Status.Ping (the proxy's ping timeout) to the server
container's address on the project network (container DNS names do not
resolve on the host; the driver refreshes the addresses after every action).
The compose ``client`` service is stopped first, so every client of the proxy
is one whose requests are logged here. The servers are the reference Go Nomad
peer and the proxy pings them with its default ``ping_method``, ``nomad``:
both are checked before the chaos starts.

``CHAOS_SECONDS`` sets the duration (default 120 s, 30 s under ``CI=true``);
``CHAOS_SEED`` replays a run (the seed is in the summary).
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import pytest
import zmq

from rpcproxy.bus.client import ProxyClient, ProxyError
from rpcproxy.bus.net.keys import CurveClient
from rpcproxy.bus.probes import NomadProber
from rpcproxy.proxy import parse_address
from tests.compose.chaos import CheckResult, Op, Outage, check_invariant
from tests.compose.compose import SERVER_SERVICES, SERVERS, ComposeProject, wait_for
from tests.helpers import in_ci

pytestmark = pytest.mark.compose

TARGETS: Final = (*SERVER_SERVICES, "publisher")
BREAKS: Final = ("kill", "pause", "disconnect")
RESTORES: Final = {"kill": "start", "pause": "unpause", "disconnect": "connect"}
SERVER_PORT: Final = 4647
CLIENT_THREADS: Final = 3
ACTION_GAP_S: Final = (1.0, 3.0)
CLIENT_GAP_S: Final = 0.1
REBALANCE_GAP_S: Final = 1.0
REBALANCE_TIMEOUT_S: Final = 3.0


def chaos_seconds() -> float:
    raw = os.environ.get("CHAOS_SECONDS", "").strip()
    if raw:
        return float(raw)
    return 30.0 if in_ci() else 120.0


def chaos_seed() -> int:
    raw = os.environ.get("CHAOS_SEED", "").strip()
    return int(raw) if raw else secrets.randbelow(2**32)


def service_of(addr: str) -> str:
    return addr.partition(":")[0]


def now() -> float:
    return time.monotonic()


class Addresses:
    """Each server service's address on the project network, as last inspected."""

    def __init__(self, project: ComposeProject) -> None:
        self._project = project
        self._lock = threading.Lock()
        self._ips: dict[str, str | None] = {}

    def refresh(self) -> None:
        found = {service: self._project.ip_address(service) for service in SERVER_SERVICES}
        with self._lock:
            self._ips = found

    def get(self, service: str) -> str | None:
        with self._lock:
            return self._ips.get(service)


def answers(prober: NomadProber, ip: str | None) -> bool:
    """Whether the Go peer at ``ip`` answers a Status.Ping within the prober's timeout."""
    if ip is None:
        return False
    addr = parse_address(f"{ip}:{SERVER_PORT}")
    return bool(prober([addr]).get(addr))


@dataclass(slots=True)
class Run:
    """What the threads share: the stop signal, their records and their failures."""

    endpoint: str
    curve: CurveClient
    context: zmq.Context[zmq.Socket[bytes]]
    addresses: Addresses
    ping_timeout_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def client(self) -> ProxyClient:
        return ProxyClient(
            self.endpoint, timeout_s=2.0, retries=3, context=self.context, curve=self.curve
        )

    def prober(self) -> NomadProber:
        # As the proxy pings the servers by default (ping_method = "nomad").
        return NomadProber(timeout_s=self.ping_timeout_s)

    def lookup(self, name: str, client: ProxyClient) -> str | None:
        sent = now()
        try:
            server = client.find_server()
        except ProxyError as exc:
            self.record(Op(name, "lookup", sent, now(), None, error=repr(exc)))
            return None
        addr = server.addr if server is not None else None
        self.record(Op(name, "lookup", sent, now(), addr))
        return addr

    def thread(self, name: str, body: Callable[[str], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                body(name)
            except Exception as exc:  # reported by the test, not lost in a thread
                with self._lock:
                    self.crashes.append(f"{name}: {exc!r}")
                self.stop.set()

        return threading.Thread(target=guarded, name=name, daemon=True)


def client_loop(run: Run, name: str) -> None:
    """Look up, use (ping), report a failure: a Nomad client of the proxy."""
    prober = run.prober()
    pace = threading.Event()
    with run.client() as client:
        while not run.stop.is_set():
            addr = run.lookup(name, client)
            if addr is not None and not answers(prober, run.addresses.get(service_of(addr))):
                sent = now()
                try:
                    rotated: bool | None = client.notify_failed_server(addr)
                    error = None
                except ProxyError as exc:
                    rotated, error = None, repr(exc)
                run.record(Op(name, "notify", sent, now(), addr, rotated=rotated, error=error))
            pace.wait(CLIENT_GAP_S)


def rebalance_loop(run: Run, name: str) -> None:
    """Rebalance, then look up once: what a client is handed after each rebalance."""
    pace = threading.Event()
    with run.client() as client:
        while not run.stop.is_set():
            sent = now()
            try:
                result = client.rebalance(timeout_s=REBALANCE_TIMEOUT_S)
                head = result.server.addr if result.server is not None else None
                run.record(Op(name, "rebalance", sent, now(), head, healthy=result.healthy))
            except ProxyError as exc:
                run.record(Op(name, "rebalance", sent, now(), None, error=repr(exc)))
            run.lookup(name, client)
            pace.wait(REBALANCE_GAP_S)


class Chaos:
    """Breaks and restores targets, keeping at least one server answering."""

    def __init__(self, project: ComposeProject, run: Run, rng: random.Random) -> None:
        self.project = project
        self.run = run
        self.rng = rng
        self.prober = run.prober()
        self.broken: dict[str, tuple[str, float]] = {}
        self.outages: list[Outage] = []
        self.actions: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []
        self.skipped = 0

    def step(self) -> None:
        target = self.rng.choice(TARGETS)
        if target in self.broken:
            self.restore(target)
        elif target in SERVER_SERVICES and not self.another_server_answers(target):
            # Breaking it could leave no server: mend another one instead.
            self.skipped += 1
            down = sorted(s for s in SERVER_SERVICES if s in self.broken)
            if down:
                self.restore(self.rng.choice(down))
        else:
            self.breaks(target, self.rng.choice(BREAKS))
        self.run.addresses.refresh()

    def another_server_answers(self, target: str) -> bool:
        return any(
            answers(self.prober, self.run.addresses.get(service))
            for service in SERVER_SERVICES
            if service != target and service not in self.broken
        )

    def breaks(self, target: str, kind: str) -> None:
        container = self.project.container(target)
        if kind == "kill":
            self.project.docker("kill", container)
        elif kind == "pause":
            self.project.pause(target)
        else:
            self.project.disconnect(target)
        self.broken[target] = (kind, now())  # surely dead from here
        self.note(target, kind)

    def restore(self, target: str) -> None:
        kind, dead_from = self.broken.pop(target)
        began = now()  # maybe alive from here
        if target in SERVER_SERVICES:
            addr = f"{target}:{SERVER_PORT}"
            self.outages.append(Outage(addr, kind, dead_from, began))
        verb = RESTORES[kind]
        if verb == "start":
            self.project.docker("start", self.project.container(target))
        elif verb == "unpause":
            self.project.unpause(target)
        else:
            self.project.connect(target)
        self.note(target, verb)

    def restore_all(self) -> None:
        for target in sorted(self.broken):
            self.restore(target)
        self.run.addresses.refresh()

    def note(self, target: str, verb: str) -> None:
        self.actions[verb] += 1
        self.log.append((now(), target, verb))


def proxy_identity(project: ComposeProject) -> tuple[str, int, bool]:
    """The proxy container's StartedAt, RestartCount and Running."""
    state = project.state("proxy")
    restarts = project.docker(
        "inspect", "--format", "{{.RestartCount}}", project.container("proxy")
    ).strip()
    return str(state["StartedAt"]), int(restarts), bool(state["Running"])


def summary(seconds: float, seed: int, chaos: Chaos, run: Run, result: CheckResult) -> list[str]:
    kinds: Counter[str] = Counter(op.kind for op in run.ops)
    notifies = [op for op in run.ops if op.kind == "notify"]
    rebalances = [op for op in run.ops if op.kind == "rebalance"]
    errors = sum(1 for op in run.ops if op.error is not None)
    actions = ", ".join(f"{verb} {count}" for verb, count in sorted(chaos.actions.items()))
    longest = max((o.dead_until - o.dead_from for o in chaos.outages), default=0.0)
    return [
        f"{seconds:g} s, seed {seed}: {sum(chaos.actions.values())} actions ({actions}); "
        f"{chaos.skipped} break(s) declined to keep a server answering",
        f"{len(chaos.outages)} server outages (longest {longest:.1f} s)",
        f"{kinds['lookup']} lookups, {len(notifies)} notifies "
        f"({sum(1 for op in notifies if op.rotated)} rotated), {len(rebalances)} rebalances "
        f"({sum(1 for op in rebalances if op.healthy is False)} found no server), "
        f"{errors} request errors",
        f"invariant: {result.triggers} trigger(s), {result.checked} handed-out server(s) "
        f"checked, {result.excluded} excluded (list rotated meanwhile), "
        f"{len(result.violations)} violation(s)",
    ]


def run_chaos(run: Run, chaos: Chaos, seconds: float) -> float:
    """Clients and rebalancer running, one chaos step every 1-3 s for ``seconds``;
    then everything mended and the threads stopped. Returns the seconds it took.

    Raises:
        AssertionError: a thread failed or hung.
    """
    threads = [
        run.thread(f"client{i}", lambda name: client_loop(run, name))
        for i in range(1, CLIENT_THREADS + 1)
    ]
    threads.append(run.thread("rebalancer", lambda name: rebalance_loop(run, name)))
    pacing = threading.Event()
    started = now()
    deadline = started + seconds
    try:
        for thread in threads:
            thread.start()
        while not run.stop.is_set() and now() < deadline:
            pacing.wait(min(chaos.rng.uniform(*ACTION_GAP_S), max(deadline - now(), 0.0)))
            if now() < deadline:
                chaos.step()
    finally:
        # Outages still open close when their restore begins.
        chaos.restore_all()
        run.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not run.crashes, f"a client thread failed: {run.crashes}"
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return now() - started


def assert_live_server_handed_out(project: ComposeProject, run: Run) -> None:
    """After the chaos the proxy knows every server and hands out a live one."""
    project.wait_for_servers(SERVERS, timeout_s=15.0)
    prober = run.prober()

    def live_server_found() -> bool:
        with project.proxy() as proxy:
            server = proxy.find_server()
            if server is None:
                return False
            if answers(prober, run.addresses.get(service_of(server.addr))):
                return True
            proxy.notify_failed_server(server.addr)
            return False

    wait_for(live_server_found, 30.0, "a live server handed out after the chaos", 0.2)


def test_chaos_no_long_dead_server_is_handed_out(
    project: ComposeProject, measure: list[str]
) -> None:
    seconds = chaos_seconds()
    seed = chaos_seed()
    ping_timeout_s = float(project.environment("proxy")["RPCPROXY_PING_TIMEOUT_S"])
    # The run is over Nomad's wire: Go peers on Nomad's codec, probed with `nomad`.
    assert project.go_peer_problems() == []
    # Every client of the proxy from here on is one of ours (see the docstring).
    project.stop("client")
    before = proxy_identity(project)

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        addresses = Addresses(project)
        addresses.refresh()
        run = Run(project.query_endpoint(), project.curve(), context, addresses, ping_timeout_s)
        probe = run.prober()
        unreachable = [s for s in SERVER_SERVICES if not answers(probe, addresses.get(s))]
        assert not unreachable, (
            f"the host cannot ping {unreachable} at their container addresses "
            f"{[addresses.get(s) for s in unreachable]}: the chaos test needs an engine "
            "whose bridge networks the host routes to (Docker Engine on Linux)"
        )
        chaos = Chaos(project, run, random.Random(seed))
        took = run_chaos(run, chaos, seconds)

        result = check_invariant(run.ops, chaos.outages, ping_timeout_s)
        lines = summary(took, seed, chaos, run, result)
        measure.extend(lines)
        print("\n".join(["chaos summary:", *lines]))

        if result.violations:
            detail = [v.describe(run.started) for v in result.violations[:20]]
            actions = [f"{t - run.started:8.3f} s {verb} {target}" for t, target, verb in chaos.log]
            raise AssertionError(
                "\n".join(["long-dead servers handed out:", *detail, *lines, "actions:", *actions])
            )
        errors = [op for op in run.ops if op.error is not None]
        assert not errors, f"the proxy did not answer {len(errors)} request(s): {errors[:5]}"
        if any(o.dead_until - o.dead_from > 2 * ping_timeout_s for o in chaos.outages):
            assert result.checked > 0, "servers were down, yet no handed-out server was judged"

        started_at, restarts, running = proxy_identity(project)
        assert running, "the proxy is not running"
        assert restarts == 0, f"the proxy restarted {restarts} time(s)"
        assert started_at == before[0], (
            f"the proxy restarted: StartedAt {before[0]} -> {started_at}"
        )
        assert_live_server_handed_out(project, run)
    finally:
        context.destroy(linger=0)
