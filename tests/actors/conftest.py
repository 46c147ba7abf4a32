"""Fixtures for actor tests: real pykka threads, in-memory network."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import pykka
import pytest

from rpcproxy.actors import ProxyActor, ProxySettings
from rpcproxy.proxy import Address, LocalIdentity, RebalanceTiming

from ._fakes import GATE_TIMEOUT, TIMEOUT, FakeProber, Harness, RecordingBox, start_recorder


@pytest.fixture(autouse=True)
def stop_actors() -> Iterator[None]:
    """Every test leaves no actor behind, even when it fails."""
    yield
    pykka.ActorRegistry.stop_all(timeout=10.0)


class StartProxy(Protocol):
    def __call__(
        self,
        *,
        primaries: Iterable[Address] = (),
        backups: Iterable[Address] = (),
        live: Iterable[Address] = (),
        gated: bool = False,
        prober: FakeProber | None = None,
        min_reuse_s: float = 600.0,
        api_mismatch_log_interval_s: float = 3 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        listen: bool = False,
        default_rng: bool = False,
    ) -> Harness: ...


@pytest.fixture
def start_proxy(stop_actors: None) -> Iterator[StartProxy]:
    """Start a ProxyActor and wait until its on_start has run."""
    probers: list[FakeProber] = []
    started: list[tuple[pykka.ActorRef[ProxyActor], list[tuple[str, pykka.ActorRef[Any]]]]] = []

    def start(
        *,
        primaries: Iterable[Address] = (),
        backups: Iterable[Address] = (),
        live: Iterable[Address] = (),
        gated: bool = False,
        prober: FakeProber | None = None,
        min_reuse_s: float = 600.0,
        api_mismatch_log_interval_s: float = 3 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        listen: bool = False,
        default_rng: bool = False,
    ) -> Harness:
        """``rng`` defaults to a seeded one; ``default_rng`` leaves ProxyActor's own."""
        fake = prober if prober is not None else FakeProber(live, gated=gated)
        probers.append(fake)
        settings = ProxySettings(
            local=LocalIdentity(datacenter="dc1", rpc_major_version=1, rpc_minor_version=1),
            timing=RebalanceTiming(min_reuse_s=min_reuse_s),
            api_mismatch_log_interval_s=api_mismatch_log_interval_s,
            primary_servers=tuple(primaries),
            backup_servers=tuple(backups),
        )
        box = RecordingBox()
        listener, inbox = start_recorder() if listen else (None, None)
        ref = ProxyActor.start(
            settings,
            fake,
            box,
            listeners=(listener,) if listener is not None else (),
            rng=None if default_rng else (rng or random.Random(1234)),
            clock=clock,
        )
        assert ref.proxy().started().get(timeout=TIMEOUT) is True
        started.append((ref, ref.proxy().children().get(timeout=TIMEOUT)))
        harness = Harness(ref, box, fake, clock, listener)
        if inbox is not None:
            harness.inbox = inbox
        return harness

    yield start
    # A held ping would block ProberActor's stop: open every gate first.
    for fake in probers:
        fake.release()
    # Stop each proxy and check that its children stopped with it: the
    # autouse stop_all would stop them anyway, and so hide a proxy that leaks
    # its children (their threads would keep a real process from exiting).
    for ref, children in started:
        ref.stop(timeout=GATE_TIMEOUT)  # False when the test stopped it already
        leaked = [name for name, child in children if not child.actor_stopped.wait(GATE_TIMEOUT)]
        assert leaked == [], f"a stopped ProxyActor left {leaked} running"
