"""``rpcproxy demo``: a whole cluster on loopback, with a live view.

Four Nomad-server stand-ins (three in dc1, one in dc2 as a backup), a
heartbeat publisher, a Consul agent stand-in listing the servers, the real
proxy service, and a client that looks up its server, "uses" it (a ping)
and reports failures. A script then crashes, hangs, drains and restores
servers so the active server visibly moves, and at last moves every server
while the heartbeats stop, so the proxy finds them through Consul
(cli/demo_move.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec
import zmq

from rpcproxy.bus.client import ProxyClient, ProxyError, Status
from rpcproxy.bus.probes import NomadProber
from rpcproxy.bus.service.discovery.consul import ENV_KEYS
from rpcproxy.bus.standins.publisher import HeartbeatPublisher
from rpcproxy.bus.wire import EVENT_TOPIC
from rpcproxy.cli.config import Config
from rpcproxy.cli.demo_cluster import LOCAL, Cluster, Step
from rpcproxy.cli.demo_move import (
    MIN_REUSE_S,
    OPERATOR_REBALANCE_AT_S,
    discovery_settings,
    move_steps,
)
from rpcproxy.cli.demo_watch import DiscoveryNews, ProxyLogLines
from rpcproxy.cli.service import ProxyService
from rpcproxy.cli.status import CLEAR, render_status
from rpcproxy.proxy import parse_address


@contextlib.contextmanager
def _without_consul_env() -> Iterator[None]:
    """Consul's variables unset for the run, and restored after.

    The demo's proxy reads the demo's Consul stand-in: a token or the
    certificates of the user's own Consul (CONSUL_HTTP_TOKEN...) are not for it.
    """
    saved = {var: os.environ.pop(var) for var in ENV_KEYS.values() if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


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
        # The server the client last found answering, and a condition to wait on it.
        self.client_using: str | None = None
        self._client_moved = threading.Condition()

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
        with _without_consul_env(), ProxyLogLines(self.say):
            return self._run(duration_s)

    def _run(self, duration_s: float | None) -> int:
        cluster = Cluster(self.context)
        config = dataclasses.replace(
            Config(),
            query=LOCAL,
            heartbeat_bind=(LOCAL,),
            events=LOCAL,
            min_reuse_s=MIN_REUSE_S / self.speed,
            ping_timeout_s=0.3,
            log_level="warning",
            consul_addr=cluster.consul.url,
            **discovery_settings(self.speed),
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
        script += move_steps(cluster, publisher, self.say, self._wait_client_on, self.speed)
        # A real second at least after the last step, so that at a high
        # --speed the view's 0.25 s refresh cannot step past it.
        tail_s = max(2.0 / self.speed, 1.0)
        total = duration_s if duration_s is not None else script[-1].at_s + tail_s
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

    def _script(self, cluster: Cluster, service: ProxyService) -> list[Step]:
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
            Step(0.0, "cluster up: s1-s3 in dc1, s4 in dc2 (backup), all in Consul", lambda: None),
            Step(5.0 / s, "crash the active server", crash),
            Step(11.0 / s, "bring it back", recover),
            Step(14.0 / s, "drain s2 from the heartbeat", drain),
            Step(19.0 / s, "list s2 again", undrain),
            Step(22.0 / s, "hang the active server (gray failure)", hang),
            Step(28.0 / s, "the hung server recovers", unhang),
            Step(
                OPERATOR_REBALANCE_AT_S / s,
                "an operator asks for rebalances until the server moves",
                rebalance,
            ),
        ]

    def _play(
        self, script: list[Step], total_s: float, service: ProxyService, cluster: Cluster
    ) -> None:
        pending = deque(script)
        news = DiscoveryNews()
        with ProxyClient(service.query_endpoint, timeout_s=1.0, retries=1) as client:
            while (elapsed := time.monotonic() - self.started) < total_s:
                if self._stop.is_set():
                    return
                while pending and pending[0].at_s <= elapsed:
                    step = pending.popleft()
                    self.step_text = step.text
                    step.action()
                    if self.plain:
                        self._print_status(_status(client), cluster)
                # Read at every refresh, in both modes: a discovery that moves
                # nothing publishes no event, so only the status tells of it.
                status = _status(client)
                line = news.news(status, cluster.label) if isinstance(status, Status) else None
                if line is not None:
                    self.say(f"status: {line}")
                    if self.plain:
                        self._print_status(status, cluster)
                if not self.plain:
                    self._redraw(status, cluster, total_s)
                self._stop.wait(0.25)  # The view's refresh rate.

    def _print_status(self, status: Status | str, cluster: Cluster) -> None:
        with self._print_lock:
            print(_table(status, cluster), flush=True)

    def _redraw(self, status: Status | str, cluster: Cluster, total_s: float) -> None:
        elapsed = time.monotonic() - self.started
        screen = [
            f"rpcproxy demo   {elapsed:5.1f}s / {total_s:.0f}s   now: {self.step_text}",
            "",
            _table(status, cluster),
            "",
            "recent events:",
            *self.log,
        ]
        sys.stdout.write(CLEAR + "\n".join(screen) + "\n")
        sys.stdout.flush()

    def _client_loop(self, service: ProxyService, cluster: Cluster) -> None:
        """A client of the proxy: use the active server, report it when it fails.

        Once it has reported every server it was handed since one last
        answered, it stops reporting and waits for the proxy to hand it a
        live one, rather than spin the proxy's list around while nothing answers.
        """
        reported: set[str] = set()
        waiting = False
        with (
            NomadProber(timeout_s=0.3) as prober,
            ProxyClient(service.query_endpoint, timeout_s=1.0, retries=2) as client,
        ):
            while not self._stop.wait(0.2):
                try:
                    server = client.find_server()
                    if server is None:
                        continue
                    name = cluster.name_of(server.addr)
                    if prober([parse_address(server.addr)]).get(parse_address(server.addr)):
                        reported.clear()
                        waiting = False
                        self._client_on(name)
                    elif server.addr not in reported:
                        reported.add(server.addr)
                        if client.notify_failed_server(server.addr):
                            self.say(f"client: {name} did not answer; reported it as failed")
                    elif not waiting:
                        waiting = True
                        self.say("client: no server it was handed answers; it waits for the proxy")
                except ProxyError as exc:
                    self.say(f"client: proxy error {exc}")

    def _client_on(self, name: str) -> None:
        """The client found ``name`` answering: say so when it is a change."""
        with self._client_moved:
            if name == self.client_using:
                return
            self.client_using = name
            self._client_moved.notify_all()
        self.say(f"client: now using {name}")

    def _wait_client_on(self, names: tuple[str, ...], timeout_s: float) -> str | None:
        """Wait up to ``timeout_s`` for the client to be using one of ``names``."""
        with self._client_moved:
            if self._client_moved.wait_for(lambda: self.client_using in names, timeout_s):
                return self.client_using
            return None

    def _event_loop(self, service: ProxyService, cluster: Cluster) -> None:
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


def _status(client: ProxyClient) -> Status | str:
    """The proxy's status, or why it could not be read."""
    try:
        return client.status()
    except ProxyError as exc:
        return f"(status unavailable: {exc})"


def _table(status: Status | str, cluster: Cluster) -> str:
    return render_status(status, cluster.label) if isinstance(status, Status) else status


def run_demo(*, duration_s: float | None, plain: bool, speed: float = 1.0) -> int:
    """Run the demo; ``plain`` prints lines instead of redrawing (also when not a TTY)."""
    plain = plain or not sys.stdout.isatty()
    return Demo(plain=plain, speed=speed).run(duration_s)
