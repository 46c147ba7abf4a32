"""Heartbeat freshness: ``status`` ages and the ``heartbeat_stale_s`` warning.

``heartbeat_age_s`` is nil until a heartbeat is applied, ``publishers`` lists
each named publisher's last seq and age, and ``serve`` warns once when no
heartbeat was applied for ``heartbeat_stale_s`` (counting from start before
the first), and says so when heartbeats come back. Waits poll with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import (
    HeartbeatPub,
    Serve,
    hb_payload,
    hb_server,
    poll_until,
)

pytestmark = pytest.mark.integration

STALE = "no heartbeat applied for"
BACK = "heartbeats are arriving again"


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


def test_no_heartbeat_yet_gives_nil_age_and_no_publishers(
    serve_factory: Callable[..., Serve],
) -> None:
    status = serve_factory().call("status")
    assert status["heartbeat_age_s"] is None
    assert status["publishers"] == []


def test_an_applied_heartbeat_sets_the_age(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory()
    serve.call("heartbeat", **heartbeat())
    status = serve.call("status")
    age = status["heartbeat_age_s"]
    assert isinstance(age, float)
    assert 0.0 <= age < 5.0
    # Without publisher, the heartbeat counts for the age but names nobody.
    assert status["publishers"] == []
    # The age grows while nothing arrives.
    poll_until(lambda: serve.call("status")["heartbeat_age_s"] > age, what="the age to grow")


def test_publishers_list_seq_and_age(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory()
    serve.call("heartbeat", **heartbeat(publisher="alpha", seq=5))
    serve.call("heartbeat", **heartbeat(publisher="beta", seq=70))
    serve.call("heartbeat", **heartbeat(publisher="alpha", seq=6))
    publishers = {p["publisher"]: p for p in serve.call("status")["publishers"]}
    assert set(publishers) == {"alpha", "beta"}
    assert publishers["alpha"]["seq"] == 6
    assert publishers["beta"]["seq"] == 70
    for entry in publishers.values():
        assert set(entry) == {"publisher", "seq", "age_s"}
        assert isinstance(entry["age_s"], float) and 0.0 <= entry["age_s"] < 5.0


def test_only_the_silent_publisher_ages(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory()
    serve.call("heartbeat", **heartbeat(publisher="quiet", seq=1))
    seq = iter(range(1, 10_000))

    def quiet_is_older() -> bool:
        serve.call("heartbeat", **heartbeat(publisher="busy", seq=next(seq)))
        ages: dict[str, float] = {
            p["publisher"]: p["age_s"] for p in serve.call("status")["publishers"]
        }
        return ages["quiet"] > 0.3 and ages["busy"] < ages["quiet"]

    poll_until(quiet_is_older, interval=0.05, what="the quiet publisher to age")
    status = serve.call("status")
    assert status["heartbeat_age_s"] < 0.3 + 5.0


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


def test_silence_from_start_warns_once_then_recovery_is_logged(
    serve_factory: Callable[..., Serve], pubs: Callable[[str], HeartbeatPub]
) -> None:
    serve = serve_factory("--heartbeat-stale-s", "0.5")
    poll_until(lambda: count(serve, STALE), timeout=10.0, what="the stale warning")
    # Still silent for several more checks (twice a second): still one warning.
    warned_at = time.monotonic()
    poll_until(lambda: time.monotonic() - warned_at > 1.2, timeout=10.0, what="more silence")
    assert serve.call("status")["heartbeat_age_s"] is None
    assert count(serve, STALE) == 1, serve.stderr()
    line = next(line for line in serve.stderr().splitlines() if STALE in line)
    assert " WARNING " in line and "heartbeat_stale_s = 0.5" in line

    # Heartbeats return: one info line.
    pub = pubs(serve.heartbeat)
    seq = iter(range(100_000))

    def back() -> int:
        pub.send(heartbeat(publisher="p", seq=next(seq)))
        return count(serve, BACK)

    poll_until(back, timeout=10.0, interval=0.05, what="the recovery line")
    assert count(serve, STALE) == 1
    recovery = next(line for line in serve.stderr().splitlines() if BACK in line)
    assert " INFO " in recovery

    # Silent again: a second warning, and only one.
    poll_until(lambda: count(serve, STALE) == 2, timeout=10.0, what="the second warning")
    age = serve.call("status")["heartbeat_age_s"]
    poll_until(
        lambda: serve.call("status")["heartbeat_age_s"] > age + 1.2,
        timeout=10.0,
        what="more silence",
    )
    assert count(serve, STALE) == 2
    assert count(serve, BACK) == 1


def test_steady_heartbeats_never_warn(
    serve_factory: Callable[..., Serve], pubs: Callable[[str], HeartbeatPub]
) -> None:
    """A publisher faster than heartbeat_stale_s keeps the log quiet."""
    serve = serve_factory("--heartbeat-stale-s", "1.5")
    serve.call("heartbeat", **heartbeat(publisher="op", seq=0))
    started = time.monotonic()
    seq = iter(range(1, 100_000))

    def seconds_of_heartbeats() -> bool:
        serve.call("heartbeat", **heartbeat(publisher="op", seq=next(seq)))
        return time.monotonic() - started > 2.0

    poll_until(seconds_of_heartbeats, timeout=15.0, interval=0.1, what="2 s of heartbeats")
    assert count(serve, STALE) == 0, serve.stderr()
    assert count(serve, BACK) == 0
