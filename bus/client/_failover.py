"""The failover loop of ``call(fn)``, written once, without I/O, for both clients.

Every user of the client wrote the same loop by hand; Nomad's own client has
it once (``client/rpc.go``), and so does this module, as Nomad's rules:

- a hold window (``hold_s``, Nomad's ``RPCHoldTimeout``: 5 s) measured from
  the first try; no wait of the loop's own ever runs past it;
- a failure that is safe to retry (``retry_on``) reports the server that
  failed, once, then the loop pauses a random time below ``hold_s / 16``
  and tries the server now at the head; anything else propagates at once
  and nothing is reported;
- with no server known, it waits for one within the hold (a watching
  client wakes when an event brings one, as Nomad's ``rpcRetryWatcher``
  does), then gives up with :class:`~rpcproxy.NoServerError`.

The loop is a generator of :data:`Step` values that a client carries out
(:class:`~rpcproxy.ProxyClient` blocking, :class:`~rpcproxy.AsyncProxyClient`
with ``await``) and sends the answers back into; the clock and the random
source are passed in, so tests drive it on a simulated clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeAlias

from rpcproxy.bus.client._results import NoServerError
from rpcproxy.bus.wire import Server

RetryOn: TypeAlias = tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""Which failures are safe to try again on another server: exception types, or a predicate."""

DEFAULT_HOLD_S = 5.0
"""Nomad's ``RPCHoldTimeout``."""

MAX_TRIED_KEPT = 64
"""The servers tried that a failure carries (``servers_tried``), the first ones."""

PAUSE_FRACTION = 16
"""The pause between tries is below ``hold_s / PAUSE_FRACTION`` (Nomad's jitter)."""


@dataclass(frozen=True, slots=True)
class Find:
    """Look up the active server; answer ``Server | None``."""


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call the user's function on ``server``; answer its result, or :class:`Failed`."""

    server: Server


@dataclass(frozen=True, slots=True)
class Failed:
    """What the user's function raised (an :class:`Exception`, never a cancellation)."""

    error: Exception


@dataclass(frozen=True, slots=True)
class Report:
    """Report ``server`` as failed (``notify_failed_server``); answer None."""

    server: Server


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` before the next try; answer None."""

    seconds: float


@dataclass(frozen=True, slots=True)
class AwaitServer:
    """No server is known: wait at most ``seconds``, sooner when one may have come."""

    seconds: float


Step: TypeAlias = Find | Invoke | Report | Pause | AwaitServer


def retryable(error: BaseException, retry_on: RetryOn) -> bool:
    if isinstance(retry_on, tuple):
        return isinstance(error, retry_on)
    return bool(retry_on(error))


def failover(
    hold_s: float,
    retry_on: RetryOn,
    clock: Callable[[], float],
    random: Callable[[], float],
    *,
    first: tuple[float, Server, Failed] | None = None,
) -> Generator[Step, Any, Any]:
    """The loop; it returns the first result of the user's function.

    ``first`` is a first try a client made itself, before the loop (its
    start, the server, its failure): a watching client's happy path is one
    local read and the call, with no loop at all, and only a failure comes
    here.

    Raises:
        Exception: a failure outside ``retry_on``, at once; or the last
            retryable failure once the hold has passed, with the servers
            tried in its ``servers_tried`` attribute and a note.
        NoServerError: no server became known within the hold.
        ValueError: ``hold_s`` is negative.
    """
    if hold_s < 0:
        raise ValueError(f"hold_s must not be negative, got {hold_s}")
    deadline = (clock() if first is None else first[0]) + hold_s
    tried: list[str] = []
    failures = 0
    while True:
        if first is not None:
            _, server, answer = first
            first = None
        else:
            found: Server | None = yield Find()
            if found is None:
                left = deadline - clock()
                if left <= 0:
                    raise NoServerError(f"no server known to the proxy within {hold_s:g} s")
                yield AwaitServer(min(random() * hold_s / PAUSE_FRACTION, left))
                continue
            server = found
            answer = yield Invoke(server)
        if not isinstance(answer, Failed):
            return answer
        error = answer.error
        if not retryable(error, retry_on):
            raise error
        yield Report(server)
        failures += 1
        if len(tried) < MAX_TRIED_KEPT:
            tried.append(server.addr)
        left = deadline - clock()
        if left <= 0:
            _give_up(error, tried, failures, hold_s)
            raise error
        yield Pause(min(random() * hold_s / PAUSE_FRACTION, left))


def _give_up(error: Exception, tried: list[str], failures: int, hold_s: float) -> None:
    """Say on the last failure which servers were tried (its attribute and a note)."""
    # An exception type with __slots__ takes no attribute: the note says it too.
    with contextlib.suppress(AttributeError):
        error.servers_tried = tuple(tried)  # type: ignore[attr-defined]
    shown = ", ".join(tried[:8]) + (f" and {failures - 8} more" if failures > 8 else "")
    error.add_note(f"rpcproxy: {failures} tries failed within {hold_s:g} s: {shown}")
