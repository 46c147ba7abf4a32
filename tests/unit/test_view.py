"""The watching client's view rules (bus/client/_view.py), with the time passed in.

Examples for each rule, then properties: the view never goes backwards
within an instance, and a simulated proxy whose events may be lost, which
restarts and goes silent, is never answered from a view older than
``3 x refresh_s`` (and, while nothing is lost, never from one behind it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy.bus.client._view import Follower, Observation, Step, View

R = 0.2
"""refresh_s of every test."""


def obs(server: str | None, epoch: int, instance: str = "a") -> Observation[str]:
    return Observation(server, epoch, instance)


def synced(now: float = 0.0, server: str = "s0", epoch: int = 0) -> Follower[str]:
    follower: Follower[str] = Follower(R, now)
    assert follower.on_reply(obs(server, epoch), now) is Step.ADOPTED
    return follower


# --------------------------------------------------------------------------
# Examples, one per rule.


def test_a_new_follower_has_no_view_and_wants_a_resync() -> None:
    follower: Follower[str] = Follower(R, 10.0)
    assert follower.fresh(10.0) is None
    assert follower.resync_due(10.0)


def test_the_first_reply_is_the_base() -> None:
    follower = synced(1.0, "s0", 4)
    assert follower.fresh(1.0) == View("s0", 4, "a", 1.0)
    assert not follower.resync_wanted


def test_a_consecutive_event_is_adopted() -> None:
    follower = synced()
    assert follower.on_event(obs("s1", 1), 0.1) is Step.ADOPTED
    assert follower.fresh(0.1) == View("s1", 1, "a", 0.1)


@pytest.mark.parametrize("epoch", [0, 3])
def test_an_event_not_newer_only_proves_liveness(epoch: int) -> None:
    follower = synced(0.0, "s0", 3)
    assert follower.on_event(obs("old", epoch), 0.5) is Step.ALIVE
    assert follower.fresh(0.5) == View("s0", 3, "a", 0.5)


def test_a_gap_wants_a_resync_and_answers_nothing_until_then() -> None:
    follower = synced()
    assert follower.on_event(obs("s3", 3), 0.1) is Step.RESYNC
    assert follower.fresh(0.1) is None
    assert follower.resync_due(0.1)
    assert follower.gaps == 1
    # Events meanwhile change nothing fresh...
    assert follower.on_event(obs("s4", 4), 0.2) is Step.RESYNC
    assert follower.fresh(0.2) is None
    # ...and an answer older than what the events said is not taken.
    assert follower.on_reply(obs("s2", 2), 0.3) is Step.IGNORED
    assert follower.resync_wanted
    assert follower.on_reply(obs("s4", 4), 0.3) is Step.ADOPTED
    assert follower.fresh(0.3) == View("s4", 4, "a", 0.3)


def test_another_instance_in_an_event_is_a_restart() -> None:
    follower = synced(0.0, "s0", 7)
    assert follower.on_event(obs("n0", 0, "b"), 0.1) is Step.RESYNC
    assert follower.restarts == 1
    assert follower.fresh(0.1) is None
    assert follower.on_reply(obs("n0", 0, "b"), 0.2) is Step.ADOPTED
    assert follower.fresh(0.2) == View("n0", 0, "b", 0.2)


def test_another_instance_in_a_reply_wants_a_resync() -> None:
    follower = synced(0.0, "s0", 7)
    assert follower.on_reply(obs("n0", 0, "b"), 0.1) is Step.RESYNC
    assert follower.fresh(0.1) is None
    assert follower.restarts == 1


def test_a_reply_is_read_your_writes_but_does_not_put_off_silence() -> None:
    follower = synced(0.0, "s0", 1)
    assert follower.on_reply(obs("s3", 3), 0.4) is Step.ADOPTED
    # The caller sees its write at once...
    assert follower.fresh(0.4) == View("s3", 3, "a", 0.0)
    # ...but the view was last confirmed by the stream at 0.0.
    assert follower.fresh(3 * R + 0.01) is None
    # Events the write caused, arriving after its reply, only prove liveness.
    assert follower.on_event(obs("s2", 2), 0.5) is Step.ALIVE
    assert follower.on_event(obs("s3", 3), 0.5) is Step.ALIVE
    assert follower.fresh(0.5) == View("s3", 3, "a", 0.5)


def test_an_older_reply_is_ignored() -> None:
    follower = synced(0.0, "s0", 5)
    assert follower.on_reply(obs("s4", 4), 0.1) is Step.IGNORED
    assert follower.fresh(0.1) == View("s0", 5, "a", 0.0)


def test_silence_makes_the_view_stale_and_wants_a_resync() -> None:
    follower = synced()
    assert follower.fresh(3 * R) is not None
    assert not follower.silent(3 * R)
    assert follower.next_deadline() == pytest.approx(3 * R)
    assert follower.silent(3 * R + 0.001)
    assert follower.fresh(3 * R + 0.001) is None
    follower.on_silence(1.0)
    assert follower.silences == 1
    assert follower.resync_due(1.0)
    assert not follower.silent(1.0)  # counted again from the new subscription
    follower.on_reply(obs("s0", 0), 1.1)
    assert follower.fresh(1.1) == View("s0", 0, "a", 1.1)


def test_a_failed_resync_is_retried_later() -> None:
    follower: Follower[str] = Follower(R, 0.0)
    follower.on_resync_failed(0.0)
    assert follower.resync_wanted
    assert not follower.resync_due(0.1)
    assert follower.resync_due(R)
    assert follower.next_deadline() == pytest.approx(R)
    assert follower.failed_resyncs == 1


def test_a_follower_needs_refresh_events() -> None:
    with pytest.raises(ValueError, match="events_refresh_s"):
        Follower(0.0, 0.0)


# --------------------------------------------------------------------------
# Properties.

messages = st.tuples(
    st.sampled_from(["event", "reply"]),
    st.integers(0, 12),
    st.sampled_from(["a", "b", "c"]),
    st.floats(0.0, 1.0),
)


@settings(max_examples=500)
@given(st.lists(messages, max_size=60))
def test_the_view_never_goes_backwards_within_an_instance(
    steps: list[tuple[str, int, str, float]],
) -> None:
    follower: Follower[str] = Follower(R, 0.0)
    now = 0.0
    for kind, epoch, instance, dt in steps:
        now += dt
        before = follower.view
        message = obs(f"{instance}{epoch}", epoch, instance)
        step = (
            follower.on_event(message, now) if kind == "event" else follower.on_reply(message, now)
        )
        after = follower.view
        assert after is not None
        if before is not None and before.instance == after.instance:
            assert after.epoch >= before.epoch
        if step is Step.ADOPTED:
            assert (after.server, after.epoch, after.instance) == (
                message.server,
                message.epoch,
                message.instance,
            )
            if kind == "event":
                assert before is not None and after.epoch == before.epoch + 1
        view = follower.fresh(now)
        if view is not None:
            assert now - view.heard_at <= 3 * R
            assert not follower.resync_wanted


@dataclass
class SimProxy:
    """A proxy's active-server history: (since, instance, epoch) per state."""

    now: float = 0.0
    instance: int = 0
    epoch: int = 0
    history: list[tuple[float, str, int]] = field(default_factory=lambda: [(0.0, "i0", 0)])

    def state(self) -> Observation[str]:
        return obs(f"i{self.instance}-{self.epoch}", self.epoch, f"i{self.instance}")

    def change(self) -> None:
        self.epoch += 1
        self.history.append((self.now, f"i{self.instance}", self.epoch))

    def restart(self) -> None:
        self.instance += 1
        self.epoch = 0
        self.history.append((self.now, f"i{self.instance}", 0))

    def was_current_since(self, instance: str, epoch: int, since: float) -> bool:
        """Whether (instance, epoch) was the state at some time in [since, now]."""
        for index, (start, inst, ep) in enumerate(self.history):
            end = self.history[index + 1][0] if index + 1 < len(self.history) else self.now
            if (inst, ep) == (instance, epoch) and end >= since and start <= self.now:
                return True
        return False


actions = st.one_of(
    st.tuples(st.just("change"), st.booleans()),  # the flag: its event is lost
    st.tuples(st.just("restart"), st.booleans()),
    st.tuples(st.just("refresh"), st.booleans()),
    st.tuples(st.just("ask"), st.just(False)),  # a caller's fallback find_server
    st.tuples(st.just("tick"), st.booleans()),  # the flag: a long tick (past silence)
)


@settings(max_examples=500)
@given(st.lists(actions, max_size=80))
def test_a_simulated_watcher_is_never_staler_than_three_refreshes(
    script: list[tuple[str, bool]],
) -> None:
    proxy = SimProxy()
    follower: Follower[str] = Follower(R, 0.0)
    lossless = True

    def drive() -> None:
        """The watcher's duties at ``proxy.now``: silence, then a due re-sync (answered now)."""
        if follower.silent(proxy.now):
            follower.on_silence(proxy.now)
        if follower.resync_due(proxy.now):
            follower.on_reply(proxy.state(), proxy.now)

    drive()
    for action, flag in script:
        if action == "tick":
            proxy.now += 4 * R if flag else R / 3
        elif action == "ask":
            follower.on_reply(proxy.state(), proxy.now)
        else:
            if action == "change":
                proxy.change()
            elif action == "restart":
                proxy.restart()
            lossless = lossless and not flag
            if not flag:
                follower.on_event(proxy.state(), proxy.now)
        drive()
        view = follower.fresh(proxy.now)
        if view is not None:
            assert proxy.was_current_since(view.instance, view.epoch, proxy.now - 3 * R), (
                view,
                proxy.history,
            )
        if lossless and action != "tick":
            # Nothing lost: the view is the proxy's state, never one event behind.
            assert view is not None
            assert (view.instance, view.epoch) == (proxy.state().instance, proxy.state().epoch)
