"""``rpcproxy demo``: a whole cluster on loopback, with a live view.

Four Nomad-server stand-ins (three in dc1, one in dc2 as a backup), a
heartbeat publisher, the real proxy service, and a client that looks up its
server, "uses" it (a ping) and reports failures. A script then crashes, hangs,
drains and restores servers so the active server visibly moves.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from rpcproxy.bus.client import ProxyClient, ProxyError
from rpcproxy.bus.probes import NomadProber
from rpcproxy.bus.standins.publisher import HeartbeatPublisher
from rpcproxy.bus.standins.standin import ServerStandIn
from rpcproxy.bus.wire import EVENT_TOPIC
from rpcproxy.cli.config import Config
from rpcproxy.cli.service import ProxyService
from rpcproxy.cli.status import CLEAR, render_status
from rpcproxy.proxy import HeartbeatServer, parse_address

_LOCAL = "tcp://127.0.0.1:*"
_NAMES = ("s1", "s2", "s3", "s4")


@dataclasses.dataclass
class _Step:
    at_s: float
    text: str
    action: Callable[[], None]


class _Cluster:
    """The stand-ins and what the publisher currently lists."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.servers = {name: ServerStandIn(_LOCAL, context=context) for name in _NAMES}
        for standin in self.servers.values():
            standin.start()
        self.listed = set(_NAMES)
        self._lock = threading.Lock()

    def name_of(self, addr: str | None) -> str:
        for name, standin in self.servers.items():
            if standin.address == addr:
                return name
        return addr or "-"

    def label(self, addr: str) -> str:
        """``s1 (127.0.0.1:4711)``: the name the script uses, then the address."""
        name = self.name_of(addr)
        return addr if name == addr else f"{name} ({addr})"

    def heartbeat_servers(self) -> tuple[HeartbeatServer, ...]:
        with self._lock:
            listed = sorted(self.listed)
        return tuple(
            HeartbeatServer(self.servers[n].address, 1, 1, "dc2" if n == "s4" else "dc1")
            for n in listed
        )

    def set_listed(self, name: str, listed: bool) -> None:
        with self._lock:
            (self.listed.add if listed else self.listed.discard)(name)

    def stop(self) -> None:
        for standin in self.servers.values():
            if standin.running:
                standin.stop()


class Demo:
    """Runs the cluster and the script; renders what the proxy says."""

    def __init__(self, *, plain: bool, speed: float) -> None:
        self.plain = plain
        self.speed = speed
        self.context: zmq.Context[Any] = zmq.Context()
        self.log: deque[str] = deque(maxlen=10)
        self.started = time.monotonic()
        self.step_text = "starting"
        self._stop = threading.Event()
        self._print_lock = threading.Lock()

    def say(self, line: str) -> None:
        stamp = f"{time.monotonic() - self.started:5.1f}s"
        self.log.append(f"{stamp}  {line}")
        if self.plain:
            try:
                # The script, the client and the event threads all report:
                # one lock keeps their lines whole.
                with self._print_lock:
                    print(f"{stamp}  {line}", flush=True)
            except BrokenPipeError:
                self._stop.set()  # Nobody reads any more; the main loop ends too.

    def run(self, duration_s: float | None) -> int:
        cluster = _Cluster(self.context)
        config = dataclasses.replace(
            Config(),
            query=_LOCAL,
            heartbeat_bind=(_LOCAL,),
            events=_LOCAL,
            min_reuse_s=6.0 / self.speed,
            ping_timeout_s=0.3,
            log_level="warning",
        )
        service = ProxyService(config)
        service.start()
        publisher = HeartbeatPublisher(
            self.context,
            connect=service.heartbeat_endpoints,
            servers=cluster.heartbeat_servers,
            num_nodes=lambda: 120,
            leader=lambda: cluster.servers["s1"].address,
            interval_s=0.5 / self.speed,
            publisher="demo",
        )
        publisher.start()
        threads = [
            threading.Thread(target=self._client_loop, args=(service, cluster), daemon=True),
            threading.Thread(target=self._event_loop, args=(service, cluster), daemon=True),
        ]
        for thread in threads:
            thread.start()
        script = self._script(cluster, service)
        total = duration_s if duration_s is not None else script[-1].at_s + 2.0 / self.speed
        try:
            self._play(script, total, service, cluster)
        except KeyboardInterrupt:
            self.say("interrupted")
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(2.0)
            publisher.stop()
            service.stop()
            cluster.stop()
            self.context.destroy(linger=0)
        print("\ndemo finished: the proxy followed every failure and recovery above.")
        return 0

    def _script(self, cluster: _Cluster, service: ProxyService) -> list[_Step]:
        def active_name() -> str:
            head = service.box.current.state.head
            return cluster.name_of(head.canonical if head else None)

        victim: dict[str, str] = {}

        def hold_timer() -> None:
            # Push the next timed rebalance out, so that it is the client that
            # notices the failure, as a real client would between rebalances.
            with ProxyClient(service.query_endpoint, timeout_s=1.0) as client:
                client.reset_rebalance_timer()

        def crash() -> None:
            victim["crash"] = active_name()
            hold_timer()
            cluster.servers[victim["crash"]].stop()
            self.say(f"script: {victim['crash']} (the active server) crashes")

        def recover() -> None:
            cluster.servers[victim["crash"]].restart()
            self.say(f"script: {victim['crash']} is back")

        def hang() -> None:
            victim["hang"] = active_name()
            hold_timer()
            cluster.servers[victim["hang"]].pause()
            self.say(f"script: {victim['hang']} (active) hangs: connection open, no answers")

        def unhang() -> None:
            cluster.servers[victim["hang"]].resume()
            self.say(f"script: {victim['hang']} answers again")

        def drain() -> None:
            cluster.set_listed("s2", False)
            self.say("script: the heartbeat stops listing s2 (drained)")

        def undrain() -> None:
            cluster.set_listed("s2", True)
            self.say("script: the heartbeat lists s2 again")

        def rebalance() -> None:
            before = active_name()
            with ProxyClient(service.query_endpoint, timeout_s=2.0) as client:
                # A shuffle keeps the head with probability 1/3 here; a few
                # tries make the move visible without looping forever.
                for _ in range(20):
                    client.rebalance()
                    if active_name() != before:
                        break
            self.say(f"script: rebalanced on request, {before} -> {active_name()}")

        s = self.speed
        return [
            _Step(0.0, "cluster up: s1-s3 in dc1, s4 in dc2 (backup)", lambda: None),
            _Step(5.0 / s, "crash the active server", crash),
            _Step(11.0 / s, "bring it back", recover),
            _Step(14.0 / s, "drain s2 from the heartbeat", drain),
            _Step(19.0 / s, "list s2 again", undrain),
            _Step(22.0 / s, "hang the active server (gray failure)", hang),
            _Step(28.0 / s, "the hung server recovers", unhang),
            _Step(32.0 / s, "an operator asks for rebalances until the server moves", rebalance),
        ]

    def _play(
        self, script: list[_Step], total_s: float, service: ProxyService, cluster: _Cluster
    ) -> None:
        pending = deque(script)
        with ProxyClient(service.query_endpoint, timeout_s=1.0, retries=1) as client:
            while (elapsed := time.monotonic() - self.started) < total_s:
                if self._stop.is_set():
                    return
                while pending and pending[0].at_s <= elapsed:
                    step = pending.popleft()
                    self.step_text = step.text
                    step.action()
                    if self.plain:
                        self._print_status(client, cluster)
                if not self.plain:
                    self._redraw(client, cluster, total_s)
                self._stop.wait(0.25)  # The view's refresh rate.

    def _print_status(self, client: ProxyClient, cluster: _Cluster) -> None:
        try:
            table = render_status(client.status(), cluster.label)
            with self._print_lock:
                print(table, flush=True)
        except ProxyError as exc:
            print(f"(status unavailable: {exc})", flush=True)

    def _redraw(self, client: ProxyClient, cluster: _Cluster, total_s: float) -> None:
        try:
            table = render_status(client.status(), cluster.label)
        except ProxyError as exc:
            table = f"(status unavailable: {exc})"
        elapsed = time.monotonic() - self.started
        screen = [
            f"rpcproxy demo   {elapsed:5.1f}s / {total_s:.0f}s   now: {self.step_text}",
            "",
            table,
            "",
            "recent events:",
            *self.log,
        ]
        sys.stdout.write(CLEAR + "\n".join(screen) + "\n")
        sys.stdout.flush()

    def _client_loop(self, service: ProxyService, cluster: _Cluster) -> None:
        """A client of the proxy: use the active server, report it when it fails."""
        with (
            NomadProber(timeout_s=0.3) as prober,
            ProxyClient(service.query_endpoint, timeout_s=1.0, retries=2) as client,
        ):
            while not self._stop.wait(0.2):
                try:
                    server = client.find_server()
                    if server is None:
                        continue
                    if not prober([parse_address(server.addr)]).get(parse_address(server.addr)):
                        name = cluster.name_of(server.addr)
                        if client.notify_failed_server(server.addr):
                            self.say(f"client: {name} did not answer; reported it as failed")
                except ProxyError as exc:
                    self.say(f"client: proxy error {exc}")

    def _event_loop(self, service: ProxyService, cluster: _Cluster) -> None:
        """A subscriber to active-server events."""
        sub: zmq.Socket[bytes] = self.context.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
        sub.connect(service.events_endpoint)
        try:
            while not self._stop.is_set():
                if not sub.poll(200):
                    continue
                _, payload = sub.recv_multipart()
                event = msgspec.msgpack.decode(payload)
                if event.get("reason") == "refresh":
                    continue  # a repeat of the current server, not a change worth a line
                addr = (event.get("server") or {}).get("addr")
                self.say(f"event: active server -> {cluster.name_of(addr)} ({event['reason']})")
        finally:
            sub.close()


def run_demo(*, duration_s: float | None, plain: bool, speed: float = 1.0) -> int:
    """Run the demo; ``plain`` prints lines instead of redrawing (also when not a TTY)."""
    plain = plain or not sys.stdout.isatty()
    return Demo(plain=plain, speed=speed).run(duration_s)
