"""A per-kind rate limit for the warnings a peer can cause (docs/protocol.md section 8).

Garbage heartbeats, heartbeats full of invalid entries, refused CURVE keys:
whatever a peer sends that the proxy warns about, the peer decides how often
that warning is written. Left alone, a hostile publisher turns the log into
its megaphone (megabytes a second) and buries the lines an operator needs.

So every such warning passes a :class:`LogGate` under a *kind* (a fixed
string chosen by the code, never by the peer): a burst of lines, then at most
one per interval. The first line let through after some were held back says
how many, so the log still tells the whole story in a few lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 10.0
DEFAULT_BURST = 5
DEFAULT_MAX_KINDS = 256


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    held: int = 0


class LogGate:
    """A token bucket per kind: ``burst`` lines at once, then one per ``interval_s``.

    The decision takes ``now`` as an argument, so it is tested without real
    time. Kinds are the code's own strings, a small fixed set; the table is
    bounded anyway (least recently used kind forgotten first), in case a
    caller ever builds one from input.

    Args:
        interval_s: seconds per line once the burst is spent.
        burst: lines allowed back to back.
        max_kinds: kinds remembered at once.
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        burst: int = DEFAULT_BURST,
        max_kinds: int = DEFAULT_MAX_KINDS,
    ) -> None:
        if interval_s <= 0 or burst < 1 or max_kinds < 1:
            raise ValueError("interval_s must be > 0, burst and max_kinds >= 1")
        self._rate = 1.0 / interval_s
        self._burst = float(burst)
        self._max_kinds = max_kinds
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # Callers log from several threads (socket loops, actors, ZAP).
        self._lock = threading.Lock()

    def admit(self, kind: str, now: float) -> int | None:
        """Whether a line of ``kind`` may be written at ``now``.

        Returns:
            None when the line must be held back; otherwise the number of
            lines of this kind held back since the last one let through
            (0 when none were), which that line should report.
        """
        with self._lock:
            bucket = self._buckets.get(kind)
            if bucket is None:
                bucket = self._buckets[kind] = _Bucket(self._burst, now)
                if len(self._buckets) > self._max_kinds:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(kind)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
                bucket.updated = now
            if bucket.tokens < 1.0:
                bucket.held += 1
                return None
            bucket.tokens -= 1.0
            held, bucket.held = bucket.held, 0
            return held


class PeerLog:
    """A logger's ``warning`` behind a :class:`LogGate`, for peer-caused lines.

    Args:
        logger: where the lines go.
        gate: the rate limit (a private one with the defaults when not given).
        clock: monotonic seconds, passed to the gate.
    """

    def __init__(
        self,
        logger: logging.Logger,
        gate: LogGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.gate = gate or LogGate()
        self._clock = clock

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` as a warning unless the gate holds ``kind`` back.

        Returns:
            Whether the line was written (or would have been, had the logger's
            level allowed it).
        """
        held = self.gate.admit(kind, self._clock())
        if held is None:
            return False
        if held:
            self.logger.warning(msg + " (%d similar messages suppressed)", *args, held)
        else:
            self.logger.warning(msg, *args)
        return True
