"""ProxyCore: what the proxy's one writer does with each message, without threads.

:class:`~rpcproxy.actors.proxy_actor.ProxyActor` runs a core on its own
thread, one message at a time, so no lock guards the state;
:class:`rpcproxy.testing.InMemoryProxy` runs one in the caller's thread under
a lock. Either way every op has one case, in :meth:`ProxyCore.handle`, and
both behave alike by construction.

After each change the core publishes an immutable snapshot and only then
replies, which gives read-your-writes to every client. It never waits on the
network: a rebalance is planned here, handed to ``probe`` (ProberActor, for
the actor) and reconciled here when the answers come back, with whatever
changed meanwhile. Timers, probes and listeners are the three effects its
runner supplies.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, assert_never

from rpcproxy.actors.counters import NO_COUNTERS, ActorCounters
from rpcproxy.actors.messages import (
    ActiveServerChanged,
    AddOutcome,
    AddPrimary,
    ApplyDiscovery,
    ApplyHeartbeat,
    ApplyHeartbeats,
    ChangeReason,
    HeartbeatResult,
    NotifyFailed,
    NotifyOutcome,
    ProbeCandidates,
    ProbeResults,
    ProxyMessage,
    Rebalance,
    RebalanceKind,
    RebalanceOutcome,
    RebalanceTick,
    Refused,
    RemoveServer,
    Reply,
    ResetRebalanceTimer,
    SetBackups,
    SetServers,
    SetServersOutcome,
)
from rpcproxy.actors.snapshot import DiscoveryInfo, PublisherInfo, Snapshot, SnapshotBox
from rpcproxy.log_gate import PeerLog
from rpcproxy.proxy import (
    DEFAULT_MAX_SERVERS,
    Address,
    Heartbeat,
    HeartbeatServer,
    LocalIdentity,
    ProxyState,
    RebalancePlan,
    RebalanceTiming,
    Throttle,
    TooManyServersError,
    add_primary,
    apply_heartbeat,
    choose_head,
    list_changes,
    notify_failed,
    plan_rebalance,
    reconcile,
    remove_server,
    set_backups,
    set_primaries,
)
from rpcproxy.proxy.persisted import within_max_servers

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the proxy's writer needs from the configuration."""

    local: LocalIdentity = field(default_factory=LocalIdentity)
    timing: RebalanceTiming = field(default_factory=RebalanceTiming)
    api_mismatch_log_interval_s: float = 3 * 3600.0
    primary_servers: tuple[Address, ...] = ()
    backup_servers: tuple[Address, ...] = ()
    restored: ProxyState = field(default_factory=ProxyState)
    """The state saved by an earlier run; the configured servers are added to it."""
    max_servers: int = DEFAULT_MAX_SERVERS
    """The most primaries and backups together (docs/protocol.md section 8)."""


@dataclass(frozen=True, slots=True)
class _SettingServers:
    addrs: tuple[Address, ...]
    reply: Reply[SetServersOutcome | Refused]


@dataclass(slots=True)
class _Rebalancing:
    token: int
    plan: RebalancePlan
    waiters: list[Reply[RebalanceOutcome]]


class ProxyCore:
    """Owns the ProxyState and answers every :data:`ProxyMessage`, one at a time.

    It is not thread-safe: its runner hands it one message at a time (an
    actor's mailbox, or a lock).

    Args:
        settings: identity, timing and initial servers.
        box: where snapshots are published for lock-free readers.
        probe: starts probing a rebalance's candidates; the answers must come
            back as :class:`ProbeResults` through :meth:`handle` (at once, or
            later from another message).
        schedule: fires one :class:`RebalanceTick` after the delay, replacing
            any pending one.
        announce: told every :class:`ActiveServerChanged`; must not block.
        rng: the only source of randomness (shuffles and jitter).
        clock: monotonic seconds, for the snapshot's rebalance deadline and ages.
        on_change: called with every new state (to save it); must not block.
        counters: what to count (failovers, rebalances, heartbeats); nothing by default.
    """

    def __init__(
        self,
        settings: ProxySettings,
        box: SnapshotBox,
        *,
        probe: Callable[[ProbeCandidates], None],
        schedule: Callable[[float], None],
        announce: Callable[[ActiveServerChanged], None],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ProxyState], None] | None = None,
        counters: ActorCounters = NO_COUNTERS,
    ) -> None:
        self._settings = settings
        self._box = box
        self._probe = probe
        self._schedule_tick = schedule
        self._announce = announce
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_change = on_change
        self._counters = counters
        self._state = ProxyState()
        self._heard: dict[str, float] = {}
        self._last_heartbeat_at: float | None = None
        self._deadline = float("inf")
        self._version = 0
        # Changes of the active server since start (docs/protocol.md section 5).
        self._epoch = 0
        self._token = 0
        self._rebalancing: _Rebalancing | None = None
        # A rebalance owed once the running one ends (its candidates went stale).
        self._rebalance_again = False
        # set_servers waiting for their probes, by token (each pending one
        # is an admitted write, so the query socket bounds how many).
        self._setting_servers: dict[int, _SettingServers] = {}
        # Set by each rebalance that probed; one that probed nothing leaves it.
        self._offline = False
        self._discovery: DiscoveryInfo | None = None
        # One heartbeat's worth of names: no more can be new at once.
        self._mismatch_throttle = Throttle(
            settings.api_mismatch_log_interval_s, max_keys=settings.max_servers
        )
        # Heartbeats come from peers: what they make us warn about is rate-limited.
        self._peer_log = PeerLog(log, clock=clock)
        # Changes published and answered but not yet logged, saved or
        # announced (see _commit): (before, after, reason, epoch), in order.
        self._aftermath: list[tuple[ProxyState, ProxyState, ChangeReason, int]] = []

    # Lifecycle ----------------------------------------------------------------

    @property
    def state(self) -> ProxyState:
        return self._state

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def offline(self) -> bool:
        return self._offline

    def start(self) -> None:
        """Adopt the restored and configured servers, schedule the first rebalance, publish."""
        state = self._starting_state()
        # Schedule before the first publish, so no snapshot lacks a deadline.
        self._schedule(self._settings.timing.first_interval(self._rng.random()))
        self._commit(state, "added")
        self._publish()
        self._follow_up()

    def replace_state(self, state: ProxyState) -> None:
        """Take ``state`` as it is, announcing nothing: the set-up of a test, not a change."""
        self._state = state
        self._publish()

    def _starting_state(self) -> ProxyState:
        """The restored state with the configured servers added, within max_servers.

        The configuration alone always fits (it is checked at load); a state
        saved under a larger ``max_servers`` may not, and is cut to its first
        servers (``serve`` cuts it as it reads the file, so this is for any
        other caller: held whole, it would refuse every add until servers left).
        """
        settings = self._settings
        state, dropped = within_max_servers(settings.restored, settings.max_servers)
        if dropped:
            log.warning(
                "the restored state holds %d servers, more than max_servers (%d): "
                "kept the first %d of its active list, dropped %d",
                settings.restored.num_members,
                settings.max_servers,
                state.num_members,
                dropped,
            )
        try:
            for addr in settings.primary_servers:
                state, _ = add_primary(state, addr, max_servers=settings.max_servers)
            if settings.backup_servers:
                state = set_backups(
                    state, settings.backup_servers, max_servers=settings.max_servers
                )
        except TooManyServersError as exc:
            log.warning("configured servers not all added to the restored ones: %s", exc)
        return state

    def abandon_probes(self) -> None:
        """Answer whoever waits on a probe that will not finish (its runner is stopping)."""
        self._answer_rebalance_waiters(RebalanceOutcome(self._state.head, None))
        setting, self._setting_servers = self._setting_servers, {}
        for pending in setting.values():
            _answer(pending.reply, Refused("the proxy is stopping", "unavailable"))

    # Messages -------------------------------------------------------------------

    def handle(self, message: ProxyMessage) -> None:
        """One message: its change published, its reply answered, then the rest (_commit)."""
        try:
            self._apply(message)
        finally:
            # Even when the message failed: what was published is announced.
            self._follow_up()

    def _apply(self, message: ProxyMessage) -> None:
        """One case per message; a message type added to the union and not here is a type error."""
        match message:
            case NotifyFailed(addr, reply):
                state, rotated = notify_failed(self._state, addr)
                if rotated:
                    self._counters.failover()
                self._commit(state, "failed")
                _answer(reply, NotifyOutcome(rotated, self._state.head))
            case AddPrimary(addr, reply):
                self._add_primary(addr, reply)
            case SetBackups(addrs, reply):
                self._set_backups(addrs, reply)
            case SetServers(addrs, force, reply):
                if force:
                    self._set_servers(addrs, dict.fromkeys(addrs, True), reply)
                else:
                    self._probe_servers_to_set(addrs, reply)
            case ApplyDiscovery(source, addrs, reply):
                _answer(reply, self._apply_discovery(source, addrs))
            case RemoveServer(addr, reply):
                state, removed = remove_server(self._state, addr)
                self._commit(state, "removed")
                _answer(reply, removed)
            case ApplyHeartbeat(heartbeat, reply):
                state, result = self._merge_heartbeat(self._state, heartbeat)
                self._commit(state, "heartbeat")
                _answer(reply, result)
            case ApplyHeartbeats(heartbeats, done):
                self._apply_heartbeats(heartbeats, done)
            case Rebalance(reply):
                self._start_rebalance(reply)
            case RebalanceTick():
                self._start_rebalance(None)
            case ProbeResults(token, answered) if token in self._setting_servers:
                setting = self._setting_servers.pop(token)
                self._set_servers(setting.addrs, answered, setting.reply)
            case ProbeResults():
                self._finish_rebalance(message)
            case ResetRebalanceTimer(reply):
                delay = self._settings.timing.reset_interval()
                self._schedule(delay)
                self._publish()
                _answer(reply, delay)
            case _:
                assert_never(message)

    def _add_primary(self, addr: Address, reply: Reply[AddOutcome | Refused]) -> None:
        try:
            state, added = add_primary(self._state, addr, max_servers=self._settings.max_servers)
        except TooManyServersError as exc:
            _answer(reply, Refused(str(exc)))
            return
        self._commit(state, "added")
        _answer(reply, AddOutcome(addr, added))

    def _set_backups(
        self, addrs: tuple[Address, ...], reply: Reply[tuple[Address, ...] | Refused]
    ) -> None:
        try:
            state = set_backups(self._state, addrs, max_servers=self._settings.max_servers)
        except TooManyServersError as exc:
            _answer(reply, Refused(str(exc)))
            return
        self._commit(state, "backup")
        _answer(reply, self._state.backups)

    def _apply_discovery(self, source: str, addrs: tuple[Address, ...]) -> bool:
        """Found servers become the backups (section 10); whether the backups changed.

        When they changed while the proxy is offline or has no primaries, a
        rebalance starts at once: a client waiting on a dead list moves to a
        live server without waiting for the timer.
        """
        room = self._settings.max_servers - len(self._state.primaries)
        if len(addrs) > room:
            # The primaries come first; a discovery never takes their place.
            log.warning(
                "discovery (%s) found %d servers; %d fit beside %d primaries under max_servers",
                source,
                len(addrs),
                max(room, 0),
                len(self._state.primaries),
            )
            addrs = addrs[: max(room, 0)]
        state = set_backups(self._state, addrs)
        changed = state.backups != self._state.backups
        self._discovery = DiscoveryInfo(source, len(addrs), self._clock())
        if state is self._state:
            self._publish()  # the discovery's record, though the lists are unchanged
        else:
            self._commit(state, "backup")
        if changed and (self._offline or not self._state.primaries):
            log.info("discovery (%s) changed the backups: rebalancing now", source)
            if self._rebalancing is not None:
                # The running one probes the old candidates: joining it would
                # leave the new servers to the timer. Run another right after.
                self._rebalance_again = True
            else:
                self._start_rebalance(None)
        return changed

    def _probe_servers_to_set(
        self, addrs: tuple[Address, ...], reply: Reply[SetServersOutcome | Refused]
    ) -> None:
        self._token += 1
        self._setting_servers[self._token] = _SettingServers(addrs, reply)
        # Last: a runner may answer at once, from inside this call.
        self._probe(ProbeCandidates(self._token, addrs, every=True))

    def _set_servers(
        self,
        addrs: tuple[Address, ...],
        answered: Mapping[Address, bool],
        reply: Reply[SetServersOutcome | Refused],
    ) -> None:
        """Make the answering servers of ``addrs`` the primaries; none answering changes nothing."""
        kept = tuple(addr for addr in dict.fromkeys(addrs) if answered.get(addr, False))
        dropped = tuple(addr for addr in dict.fromkeys(addrs) if not answered.get(addr, False))
        if not kept:
            _answer(
                reply, Refused(f"no server answered a probe ({len(dropped)} probed)", "unavailable")
            )
            return
        try:
            state = set_primaries(self._state, kept, max_servers=self._settings.max_servers)
        except TooManyServersError as exc:
            _answer(reply, Refused(str(exc)))
            return
        if dropped:
            log.warning(
                "set_servers: %d of %d servers did not answer and were left out: %s",
                len(dropped),
                len(dropped) + len(kept),
                _some(dropped),
            )
        self._commit(state, "added")
        _answer(reply, SetServersOutcome(kept, dropped))

    def _apply_heartbeats(self, heartbeats: Sequence[Heartbeat], done: Callable[[], None]) -> None:
        """One batch of the SUB socket's heartbeats, one commit for all of them."""
        try:
            state = self._state
            for heartbeat in heartbeats:
                state, _ = self._merge_heartbeat(state, heartbeat)
            self._commit(state, "heartbeat")
        finally:
            # The listener sends no other batch until this is called.
            _answer(lambda _: done(), None)

    def _merge_heartbeat(
        self, state: ProxyState, heartbeat: Heartbeat
    ) -> tuple[ProxyState, HeartbeatResult]:
        """Merge one heartbeat into ``state``, with its logs and counts; no commit."""
        outcome = apply_heartbeat(state, heartbeat, self._settings.local)
        if outcome.stale:
            log.debug(
                "stale heartbeat from %s (seq %s) dropped", heartbeat.publisher, heartbeat.seq
            )
            self._counters.heartbeats("stale")
            return state, HeartbeatResult(changed=False, stale=True)
        now = self._clock()
        self._warn_skipped(heartbeat, outcome.newer_api, outcome.invalid, now)
        self._counters.heartbeats("applied")
        self._last_heartbeat_at = now
        if heartbeat.publisher is not None:
            self._heard[heartbeat.publisher] = now
        return outcome.state, HeartbeatResult(changed=outcome.changed, stale=False)

    def _warn_skipped(
        self,
        heartbeat: Heartbeat,
        newer_api: Sequence[HeartbeatServer],
        invalid: Sequence[tuple[str, str]],
        now: float,
    ) -> None:
        """The warnings of rules 2 and 3 and of an empty heartbeat, rate-limited.

        A peer chooses how many entries to get wrong, so invalid entries make
        one line per heartbeat, and every kind of line passes the peer log's
        gate (a burst, then one per interval, with a count of those held back).
        """
        local = self._settings.local
        for server in newer_api:
            # Rule 2's own limit (once per address per interval) comes first;
            # the gate then bounds a heartbeat of thousands of fresh names.
            if self._mismatch_throttle.allow(server.rpc_advertise_addr, now):
                self._peer_log.warning(
                    "newer api",
                    "ignoring server %s: it speaks RPC API v%d.%d, newer than our v%d.%d",
                    server.rpc_advertise_addr[:80],
                    server.rpc_major_version,
                    server.rpc_minor_version,
                    local.rpc_major_version,
                    local.rpc_minor_version,
                )
        if invalid:
            # Both texts come from a peer: cap what each entry can write.
            shown = "; ".join(f"{addr[:80]!r}: {reason[:200]}" for addr, reason in invalid[:3])
            more = f" and {len(invalid) - 3} more" if len(invalid) > 3 else ""
            self._peer_log.warning(
                "invalid entries",
                "skipping %d heartbeat servers whose address does not parse: %s%s",
                len(invalid),
                shown,
                more,
            )
        if not heartbeat.servers:
            self._peer_log.warning(
                "empty heartbeat",
                "a heartbeat from %s lists no servers: every primary is dropped, backups stay",
                heartbeat.publisher[:80] if heartbeat.publisher is not None else "(no publisher)",
            )

    # Rebalancing ------------------------------------------------------------------

    def _start_rebalance(self, reply: Reply[RebalanceOutcome] | None) -> None:
        if self._rebalancing is not None:
            # One rebalance at a time: later requests share the running one's result.
            if reply is not None:
                self._rebalancing.waiters.append(reply)
            return
        waiters = [reply] if reply is not None else []
        plan = plan_rebalance(self._state, self._rng)
        if plan is None:
            self._counters.rebalanced("skipped")
            self._restart_timer()
            self._publish()
            for waiter in waiters:
                _answer(waiter, RebalanceOutcome(self._state.head, None))
            return
        self._token += 1
        self._rebalancing = _Rebalancing(self._token, plan, waiters)
        # Last: a runner may answer at once, from inside this call.
        self._probe(ProbeCandidates(self._token, plan.candidates))

    def _finish_rebalance(self, results: ProbeResults) -> None:
        pending = self._rebalancing
        if pending is None or pending.token != results.token:
            return
        head_index = choose_head(pending.plan.candidates, results.answered)
        if head_index is None:
            log.warning(
                "rebalance: none of %d servers answered a ping; keeping the list",
                len(pending.plan.candidates),
            )
            healthy = False
            result: RebalanceKind = "none_answered"
        else:
            before = self._state.head
            outcome = reconcile(self._state, pending.plan, head_index)
            if outcome.abandoned:
                log.info("rebalance abandoned: the chosen server was removed while pinging")
            self._commit(outcome.state, "rebalance")
            healthy = True
            result = (
                "abandoned"
                if outcome.abandoned
                else "moved"
                if self._state.head != before
                else "kept"
            )
        self._counters.rebalanced(result)
        self._set_offline(not healthy)
        self._restart_timer()
        self._publish()
        self._answer_rebalance_waiters(RebalanceOutcome(self._state.head, healthy))
        if self._rebalance_again:
            self._rebalance_again = False
            self._start_rebalance(None)

    def _set_offline(self, offline: bool) -> None:
        """Record whether the last probed rebalance found nobody; log each flip once."""
        if offline == self._offline:
            return
        self._offline = offline
        if offline:
            log.warning("offline: no server answered the last rebalance's pings")
        else:
            log.info("back online: a server answered a rebalance's ping")

    def _answer_rebalance_waiters(self, result: RebalanceOutcome) -> None:
        pending, self._rebalancing = self._rebalancing, None
        for waiter in pending.waiters if pending else ():
            _answer(waiter, result)

    def _restart_timer(self) -> None:
        state = self._state
        delay = self._settings.timing.rebalance_interval(
            state.num_nodes, len(state.active), self._rng.random()
        )
        self._schedule(delay)

    def _schedule(self, delay_s: float) -> None:
        self._deadline = self._clock() + delay_s
        self._schedule_tick(delay_s)

    # Publishing ---------------------------------------------------------------------

    def _commit(self, state: ProxyState, reason: ChangeReason) -> None:
        """Adopt ``state`` and publish it; logging, saving and announcing it follow.

        They follow once the message's reply has been answered
        (:meth:`_follow_up`): the writer waits for that reply, and handing it
        over first lets the query thread send it while this thread logs (a
        write to the log lets go of the GIL) instead of after (issue 20's
        write round trip).
        """
        if state is self._state:
            return
        previous = self._state
        self._state = state
        if state.head != previous.head:
            # Counted before publishing: a reply built from the new snapshot
            # carries the epoch of the event announcing it.
            self._epoch += 1
        self._publish()
        self._aftermath.append((previous, state, reason, self._epoch))

    def _follow_up(self) -> None:
        """Log, announce and save the changes published since the last call, in order.

        The log comes first: announcing wakes the events actor and saving the
        persist actor, and either would then compete with the query thread
        for the GIL while it sends the reply; a log line is a few
        microseconds of this thread, and the event could not go out sooner
        anyway, as its actor needs the GIL this thread holds meanwhile.
        """
        changes, self._aftermath = self._aftermath, []
        for previous, state, reason, epoch in changes:
            before, after = previous.head, state.head
            _log_membership(previous, state, reason)
            if after != before:
                log.info("active server %s -> %s (%s)", before, after, reason)
                self._announce(ActiveServerChanged(after, reason, epoch))
            if self._on_change is not None:
                self._on_change(state)

    def _publish(self) -> None:
        self._version += 1
        seqs = self._state.publisher_seqs
        # The pure state bounds the publishers it remembers; forget the times
        # of those it dropped, so this table stays bounded too.
        for gone in self._heard.keys() - seqs.keys():
            del self._heard[gone]
        self._box.publish(
            Snapshot(
                self._state,
                self._deadline,
                self._version,
                last_heartbeat_at=self._last_heartbeat_at,
                publishers=tuple(
                    PublisherInfo(name, seq, self._heard.get(name)) for name, seq in seqs.items()
                ),
                offline=self._offline,
                epoch=self._epoch,
                discovery=self._discovery,
            )
        )


MEMBERSHIP_NAMES_SHOWN = 5
"""Servers named per side of a membership line; the rest are counted."""


def _log_membership(before: ProxyState, after: ProxyState, reason: ChangeReason) -> None:
    """One line per change of the server lists, with its reason.

    Counts, and the first few names: a heartbeat may swap 4096 servers at
    once, many times a second, and the line must stay a line.
    """
    for name, old, new in (
        ("primary", before.primaries, after.primaries),
        ("backup", before.backups, after.backups),
    ):
        added, removed = list_changes(old, new)
        if added or removed:
            log.info(
                "%s servers changed (%s): +%d %s -%d %s",
                name,
                reason,
                len(added),
                _some(added),
                len(removed),
                _some(removed),
            )


def _some(addrs: Sequence[Address]) -> str:
    """``[a, b, c, d, e and 12 more]``: a bounded list of names for a log line."""
    names = ", ".join(a.canonical for a in addrs[:MEMBERSHIP_NAMES_SHOWN])
    more = len(addrs) - MEMBERSHIP_NAMES_SHOWN
    return f"[{names} and {more} more]" if more > 0 else f"[{names}]"


def _answer(reply: Reply[R], result: R) -> None:
    """Call a request's ``reply``; a broken one is logged, never fatal.

    The reply is the caller's code (a future, the query loop's queue). If it
    raises, pykka would stop this actor on a told message, and with it the
    state every other client depends on.
    """
    try:
        reply(result)
    except Exception:
        log.exception("replying %r failed", result)
