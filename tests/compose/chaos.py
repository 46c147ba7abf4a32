"""The chaos test's records and the invariant it checks, kept free of Docker.

The invariant (issue: "no client is handed a server that has been dead for
longer than one ping timeout after a notify or a rebalance") read exactly:

* Every time is the host's ``time.monotonic()``: the chaos driver, the client
  threads and the rebalancer all run on the host, so no clock is compared
  with another.
* An :class:`Outage` of server S lasts from the moment the docker command
  that broke it (kill, pause, network disconnect) *returned* to the moment
  the command that restores it (start, unpause, connect) *began*. S is
  surely dead in between; outside it S may be alive.
* A *trigger* is a ``notify_failed_server(S)`` sent more than one ping
  timeout T after S's outage began, or a rebalance that answered "healthy"
  and was sent more than T after S's outage began (so its ping of S surely
  went unanswered), with S still dead when the trigger was answered.
* After a trigger, the next server handed out must not be S: for a rebalance
  the server it put first (its reply), and for either kind the first lookup
  each client thread sent after the trigger's reply, while S is still dead
  when that lookup is answered.

Why one T, and why some lookups are not judged:

* A rebalance started *before* S died may have heard S answer and put it
  first when it reconciles, up to T (the prober's shared deadline) after it
  started: more than T after S died, that is over.
* Nomad's failover rotates one server per notify. If other servers are
  rotated off the head between the trigger and the lookup (a rotating
  notify of another server) the list may have come round to S again, by the
  algorithm as designed and not by a fault. Likewise a rebalance still
  running from before S's outage + T may reconcile into the window. Such a
  lookup is counted as *excluded*, not as checked. Every client of the
  proxy during the run is one of the host's threads (the compose ``client``
  service is stopped), so every such event is seen.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

OpKind = Literal["lookup", "notify", "rebalance"]


@dataclass(frozen=True, slots=True)
class Op:
    """One request a host-side client made to the proxy, with host times.

    ``server``: for a lookup the server handed out (None: none, or an error);
    for a notify the server reported; for a rebalance the server put first.
    ``rotated`` is the notify's reply (None when the reply was lost: it may
    have rotated). ``healthy`` is the rebalance's reply.
    """

    client: str
    kind: OpKind
    sent: float
    answered: float
    server: str | None
    rotated: bool | None = None
    healthy: bool | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outage:
    """A server surely dead from ``dead_from`` until ``dead_until`` (inf: to the end)."""

    server: str
    kind: str
    dead_from: float
    dead_until: float = math.inf

    def dead_at(self, t: float) -> bool:
        return self.dead_from <= t < self.dead_until


@dataclass(frozen=True, slots=True)
class Violation:
    """``handed`` gave out ``outage.server`` after ``trigger`` although it was long dead."""

    outage: Outage
    trigger: Op
    handed: Op

    def describe(self, t0: float = 0.0) -> str:
        o, e, h = self.outage, self.trigger, self.handed
        return (
            f"{h.client} was handed {o.server} at {h.answered - t0:.3f} s by its {h.kind} "
            f"(sent {h.sent - t0:.3f} s), after {e.client}'s {e.kind} sent {e.sent - t0:.3f} s, "
            f"answered {e.answered - t0:.3f} s; {o.server} dead by {o.kind} "
            f"since {o.dead_from - t0:.3f} s"
        )


@dataclass(slots=True)
class CheckResult:
    """How many handed-out servers were judged, how many could not be, and the faults."""

    triggers: int = 0
    checked: int = 0
    excluded: int = 0
    violations: list[Violation] = field(default_factory=list)


def _changes_order(op: Op) -> bool:
    """Whether ``op`` may have changed the active list's order."""
    if op.kind == "notify":
        return op.rotated is not False
    return op.kind == "rebalance"


def _overlaps(op: Op, start: float, end: float) -> bool:
    return op.sent <= end and op.answered >= start


def check_invariant(
    ops: Iterable[Op], outages: Sequence[Outage], ping_timeout_s: float
) -> CheckResult:
    """Judge every server handed out after a trigger (see the module docstring)."""
    all_ops = sorted(ops, key=lambda op: op.sent)
    changers = [op for op in all_ops if _changes_order(op)]
    lookups: dict[str, list[Op]] = {}
    for op in all_ops:
        if op.kind == "lookup" and op.error is None:
            lookups.setdefault(op.client, []).append(op)
    sent_times = {client: [op.sent for op in ops_] for client, ops_ in lookups.items()}
    result = CheckResult()

    def interfered(trigger: Op, outage: Outage, end: float) -> bool:
        late = outage.dead_from + ping_timeout_s
        for other in changers:
            if other is trigger or not _overlaps(other, trigger.sent, end):
                continue
            if other.kind == "notify" and other.server != outage.server:
                return True
            if other.kind == "rebalance" and other.sent <= late:
                return True
        return False

    for trigger in all_ops:
        if trigger.error is not None:
            continue
        if trigger.kind == "notify":
            candidates = [o for o in outages if o.server == trigger.server]
        elif trigger.kind == "rebalance" and trigger.healthy is True:
            candidates = list(outages)
        else:
            continue
        for outage in candidates:
            if not (
                trigger.sent > outage.dead_from + ping_timeout_s
                and outage.dead_at(trigger.answered)
            ):
                continue
            result.triggers += 1
            if trigger.kind == "rebalance":
                result.checked += 1
                if trigger.server == outage.server:
                    result.violations.append(Violation(outage, trigger, trigger))
            for client, client_lookups in lookups.items():
                index = bisect.bisect_right(sent_times[client], trigger.answered)
                if index == len(client_lookups):
                    continue
                handed = client_lookups[index]
                if not outage.dead_at(handed.answered):
                    continue
                if handed.server != outage.server:
                    result.checked += 1
                elif interfered(trigger, outage, handed.answered):
                    result.excluded += 1
                else:
                    result.checked += 1
                    result.violations.append(Violation(outage, trigger, handed))
    return result
