"""``/healthz`` and ``/readyz`` on the metrics endpoint (docs/protocol.md section 11).

Two questions an orchestrator asks, with different answers when the cluster
is down: *alive* (restart me if not) and *ready* (send clients here). A proxy
whose servers all went away is alive, since restarting it would not bring
them back, but not ready. Both read only what is published (the snapshot and
the service's stopping flag), never the actor's mailbox, so a check never
waits behind writes and costs a scrape nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rpcproxy.actors import SnapshotBox
from rpcproxy.bus.service.http_wire import Request, Response, Route

__all__ = ["health_routes"]

_JSON = "application/json"


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        status,
        json.dumps(body, separators=(",", ":")).encode() + b"\n",
        _JSON,
        headers={"Cache-Control": "no-store"},
    )


def health_routes(box: SnapshotBox, stopping: Callable[[], bool]) -> dict[str, Route]:
    """The two routes, for :class:`~rpcproxy.bus.service.metrics.MetricsServer`.

    Args:
        box: the proxy's published snapshots.
        stopping: True once ``serve`` is stopping, or one of its parts has
            died (it is about to stop, exit 1, and be restarted).
    """

    def healthz(_request: Request) -> Response:
        if stopping():
            return _json(503, {"status": "stopping"})
        return _json(200, {"status": "ok"})

    def readyz(_request: Request) -> Response:
        snapshot = box.current  # one read: the reason and the answer agree
        active = snapshot.state.active
        if stopping():
            reason = "stopping"
        elif not active:
            reason = "no_servers"
        elif snapshot.offline:
            reason = "offline"
        else:
            return _json(200, {"status": "ready", "active": active[0].canonical})
        return _json(503, {"status": "not_ready", "reason": reason})

    return {"/healthz": healthz, "/readyz": readyz}
