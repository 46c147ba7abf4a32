"""Heartbeat freshness: ``status`` ages and the ``heartbeat_stale_s`` warning.

``heartbeat_age_s`` is nil until a heartbeat is applied, ``publishers`` lists
each named publisher's last seq and age, and ``serve`` warns once when no
heartbeat was applied for ``heartbeat_stale_s`` (counting from start before
the first), and says so when heartbeats come back. Waits poll with a deadline;
the warning is checked at explicit times, not by waiting for them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from rpcproxy.actors import Snapshot
from rpcproxy.cli.config import Config
from rpcproxy.cli.service import ProxyService
from rpcproxy.proxy import ProxyState
from tests.integration.serving import HeartbeatPub, RawClient, Serve, hb_payload, hb_server
from tests.waiting import poll_until

# Only the tests that start the real ``rpcproxy serve`` (serve_factory) carry
# the integration mark; the staleness-warning tests below run the service in
# process.

STALE = "no heartbeat applied for"
BACK = "heartbeats are arriving again"
STALE_S = 60.0


def count(serve: Serve, text: str) -> int:
    return sum(text in line for line in serve.stderr().splitlines())


def heartbeat(**extra: Any) -> dict[str, Any]:
    return hb_payload([hb_server("10.0.0.1")], num_nodes=3, **extra)


@pytest.fixture
def pubs() -> Iterator[Callable[[str], HeartbeatPub]]:
    made: list[HeartbeatPub] = []

    def make(endpoint: str) -> HeartbeatPub:
        pub = HeartbeatPub(connect=endpoint)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()


# --------------------------------------------------------------------------
# status


@pytest.mark.integration
def test_no_heartbeat_yet_gives_nil_age_and_no_publishers(
    serve_factory: Callable[..., Serve],
) -> None:
    status = serve_factory().call("status")
    assert status["heartbeat_age_s"] is None
    assert status["publishers"] == []


@pytest.mark.integration
def test_an_applied_heartbeat_sets_the_age(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory()
    sent = time.monotonic()
    serve.call("heartbeat", **heartbeat())
    status = serve.call("status")
    age = status["heartbeat_age_s"]
    assert isinstance(age, float)
    # Counted from the heartbeat: no older than the time since it was sent
    # (serve's clock is the same CLOCK_MONOTONIC), however slow the machine.
    assert 0.0 <= age <= time.monotonic() - sent
    # Without publisher, the heartbeat counts for the age but names nobody.
    assert status["publishers"] == []
    # The age grows while nothing arrives.
    poll_until(lambda: serve.call("status")["heartbeat_age_s"] > age, what="the age to grow")


@pytest.mark.integration
def test_publishers_list_seq_and_age(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory()
    sent = time.monotonic()
    serve.call("heartbeat", **heartbeat(publisher="alpha", seq=5))
    serve.call("heartbeat", **heartbeat(publisher="beta", seq=70))
    serve.call("heartbeat", **heartbeat(publisher="alpha", seq=6))
    publishers = {p["publisher"]: p for p in serve.call("status")["publishers"]}
    assert set(publishers) == {"alpha", "beta"}
    assert publishers["alpha"]["seq"] == 6
    assert publishers["beta"]["seq"] == 70
    for entry in publishers.values():
        assert set(entry) == {"publisher", "seq", "age_s"}
        assert isinstance(entry["age_s"], float)
        assert 0.0 <= entry["age_s"] <= time.monotonic() - sent


@pytest.mark.integration
def test_only_the_silent_publisher_ages(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory()
    serve.call("heartbeat", **heartbeat(publisher="quiet", seq=1))
    seq = iter(range(1, 10_000))
    busy_sent = [0.0]

    def quiet_is_older() -> bool:
        busy_sent[0] = time.monotonic()
        serve.call("heartbeat", **heartbeat(publisher="busy", seq=next(seq)))
        ages: dict[str, float] = {
            p["publisher"]: p["age_s"] for p in serve.call("status")["publishers"]
        }
        return ages["quiet"] > 0.3 and ages["busy"] < ages["quiet"]

    poll_until(quiet_is_older, interval=0.05, what="the quiet publisher to age")
    status = serve.call("status")
    ages = {p["publisher"]: p["age_s"] for p in status["publishers"]}
    # The proxy's age follows the latest heartbeat (busy's), not the quiet one.
    assert status["heartbeat_age_s"] <= time.monotonic() - busy_sent[0]
    assert status["heartbeat_age_s"] < ages["quiet"]


@pytest.mark.integration
def test_stale_and_invalid_heartbeats_do_not_refresh_the_age(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory()
    serve.call("heartbeat", **heartbeat(publisher="p", seq=10))
    poll_until(lambda: serve.call("status")["heartbeat_age_s"] > 0.3, what="the age to pass 0.3 s")
    reply = serve.call("heartbeat", **heartbeat(publisher="p", seq=10))
    assert reply["stale"] is True
    bad = serve.client.request({"op": "heartbeat", "servers": "nope", "num_nodes": 1})
    assert bad["ok"] is False
    status = serve.call("status")
    assert status["heartbeat_age_s"] > 0.3
    assert status["publishers"][0]["seq"] == 10
    assert status["publishers"][0]["age_s"] > 0.3


@pytest.mark.integration
def test_heartbeats_on_the_socket_set_the_age(
    serve_factory: Callable[..., Serve], pubs: Callable[[str], HeartbeatPub]
) -> None:
    serve = serve_factory()
    pub = pubs(serve.heartbeat)
    seq = iter(range(10_000))

    def applied() -> bool:
        pub.send(heartbeat(publisher="socket", seq=next(seq)))
        return serve.call("status")["heartbeat_age_s"] is not None

    poll_until(applied, what="a heartbeat over PUB/SUB")
    publishers = serve.call("status")["publishers"]
    assert [p["publisher"] for p in publishers] == ["socket"]


# --------------------------------------------------------------------------
# The staleness warning in the log.
#
# ``ProxyService.watch(now)`` decides it; serve's loop calls it with
# ``time.monotonic()`` twice a second. Here an in-process service (its real
# actor, its real query socket) is watched at explicit times, so minutes of
# silence cost nothing and no test waits on the clock. One test checks that
# the real ``serve`` calls it.


@dataclass
class Watched:
    """An in-process ProxyService (``heartbeat_stale_s`` = 60) and when it was made."""

    service: ProxyService
    made_before: float
    """``time.monotonic()`` just before the service was made; it counts silence from then on."""
    made_after: float
    """``time.monotonic()`` just after."""
    client: RawClient

    def heartbeat(self, seq: int) -> float:
        """Apply a heartbeat from publisher ``p``; the actor's time of applying it."""
        reply = self.client.call("heartbeat", **heartbeat(publisher="p", seq=seq))
        assert reply["stale"] is False, reply

        def applied() -> float | None:
            current = self.service.box.current
            if any(p.name == "p" and p.seq == seq for p in current.publishers):
                return current.last_heartbeat_at
            return None

        return poll_until(applied, what=f"heartbeat {seq} in the snapshot")

    def watch(self, now: float) -> None:
        assert self.service.watch(now) == [], "a part of the service died"


def exactly(age: float, after: float) -> float:
    """The last time at which something from ``after`` is not older than ``age``.

    ``after + age`` itself, unless the sum was rounded up (near a power of two).
    """
    now = after + age
    while now - after > age:
        now = math.nextafter(now, after)
    return now


@pytest.fixture
def watched() -> Iterator[Watched]:
    config = dataclasses.replace(
        Config(),
        query="tcp://127.0.0.1:*",
        heartbeat_bind=("tcp://127.0.0.1:*",),
        events="",
        heartbeat_stale_s=STALE_S,
    )
    made_before = time.monotonic()
    service = ProxyService(config)
    made_after = time.monotonic()
    service.start()
    client = RawClient(service.query_endpoint)
    try:
        yield Watched(service, made_before, made_after, client)
    finally:
        client.close()
        late = service.stop()
        pykka.ActorRegistry.stop_all(timeout=10.0)  # for the next test, whatever happened
        assert late == [], f"ProxyService.stop gave up on {late}"


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[logging.LogRecord]]:
    """The service's log records whose message contains a text."""
    caplog.set_level(logging.INFO, logger="rpcproxy")

    def records(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if text in r.getMessage()]

    return records


def test_silence_from_start_warns_once_after_heartbeat_stale_s(
    watched: Watched, logged: Callable[[str], list[logging.LogRecord]]
) -> None:
    watched.watch(watched.made_before + STALE_S - 0.1)
    assert logged(STALE) == []

    watched.watch(watched.made_after + STALE_S + 1.0)
    (warning,) = logged(STALE)
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("no heartbeat applied for 61 s")
    assert "(heartbeat_stale_s = 60)" in warning.getMessage()

    # Still silent at every later check, for an hour: still one warning.
    for later in range(62, 3600, 30):
        watched.watch(watched.made_after + later)
    assert len(logged(STALE)) == 1
    assert logged(BACK) == []
    assert watched.client.call("status")["heartbeat_age_s"] is None


def test_recovery_is_logged_once_and_a_new_silence_warns_again(
    watched: Watched, logged: Callable[[str], list[logging.LogRecord]]
) -> None:
    watched.watch(watched.made_after + STALE_S + 1.0)
    assert len(logged(STALE)) == 1

    heard = watched.heartbeat(seq=1)
    watched.watch(heard + 0.5)
    (recovery,) = logged(BACK)
    assert recovery.levelno == logging.INFO
    watched.watch(heard + 1.0)
    watched.watch(exactly(STALE_S, after=heard))  # not older than heartbeat_stale_s: fine
    assert len(logged(BACK)) == 1
    assert len(logged(STALE)) == 1

    # A replayed seq is not applied, so it does not end the next silence.
    assert watched.client.call("heartbeat", **heartbeat(publisher="p", seq=1))["stale"] is True
    watched.watch(heard + STALE_S + 1.0)
    assert len(logged(STALE)) == 2
    watched.watch(heard + STALE_S + 30.0)
    assert len(logged(STALE)) == 2
    assert len(logged(BACK)) == 1

    # The next applied heartbeat ends it: one more recovery line.
    watched.watch(watched.heartbeat(seq=2) + 0.5)
    assert len(logged(BACK)) == 2


def test_steady_heartbeats_never_warn(logged: Callable[[str], list[logging.LogRecord]]) -> None:
    """A publisher faster than heartbeat_stale_s keeps the log quiet, for an hour.

    Heartbeats through a socket arrive when the test sends them, all within
    moments of the start; to space them out over an hour, this service is not
    started and its snapshots (what ProxyActor publishes) say when each came.
    """
    config = dataclasses.replace(Config(), heartbeat_stale_s=STALE_S)
    service = ProxyService(config)
    start = time.monotonic()
    for n, heard in enumerate(range(40, 3600, 40), start=1):
        snapshot = Snapshot(ProxyState(), float("inf"), n, last_heartbeat_at=start + heard)
        service.box.publish(snapshot)
        for since in (1.0, STALE_S / 2, STALE_S - 0.5):
            assert service.watch(start + heard + since) == []
    assert logged(STALE) == []
    assert logged(BACK) == []


@pytest.mark.integration
def test_serve_warns_about_silence(serve_factory: Callable[..., Serve]) -> None:
    """The real ``serve`` loop watches: its log gets the warning, with the configured value."""
    serve = serve_factory("--heartbeat-stale-s", "0.2")
    poll_until(lambda: count(serve, STALE), timeout=10.0, what="the stale warning")
    line = next(line for line in serve.stderr().splitlines() if STALE in line)
    assert " WARNING " in line and "heartbeat_stale_s = 0.2" in line
