"""Benchmark: what ``publish`` sends when ``NOMAD_ADDR`` is its only source (issue 16, item 1).

A shell set up for the ``nomad`` CLI has ``NOMAD_ADDR``. Before issue 16,
``publish --connect ...`` ignored it and sent ``servers: []`` every second,
dropping every primary of the proxy it fed. Here ``publish`` runs with only
``NOMAD_ADDR`` (an agent from tests/nomadapi.py serving two servers), then
against the same agent answering 500, side by side with a static list at the
same interval; a SUB socket of the benchmark's own counts every heartbeat
and every empty one.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping

import zmq
from common import CTX, Result, rpcproxy_path, stop_process, unpack

from tests.nomadapi import nomad_api

INTERVAL_S = 0.05
STATIC = "10.0.0.9:4647"


def _count(env: Mapping[str, str], args: list[str], seconds: float) -> tuple[int, int]:
    """Run ``publish`` for ``seconds``; (heartbeats received, of which empty)."""
    sub: zmq.Socket[bytes] = CTX.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat/")
    sub.bind("tcp://127.0.0.1:*")
    endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
    argv = [rpcproxy_path(), "publish", "--connect", endpoint, "--interval-s", str(INTERVAL_S)]
    proc = subprocess.Popen(
        [*argv, *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received = empty = 0
    try:
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if sub.poll(int(left * 1000) + 1):
                _, payload = sub.recv_multipart()
                received += 1
                empty += not unpack(payload)["servers"]
    finally:
        stop_process(proc)
        sub.close()
    return received, empty


def publish_source(duration_s: float = 3.0) -> Result:
    """Heartbeats and empty heartbeats per source over ``duration_s`` each."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOMAD_")}
    with nomad_api() as (fixture, url):
        nomad_env = {**base, "NOMAD_ADDR": url}
        healthy = _count(nomad_env, [], duration_s)
        fixture.status = 500
        broken = _count(nomad_env, [], duration_s)
    static = _count(base, ["--servers", STATIC], duration_s)
    rows = [
        ["`--servers` (baseline)", str(static[0]), str(static[1])],
        ["only `NOMAD_ADDR`, agent healthy", str(healthy[0]), str(healthy[1])],
        ["only `NOMAD_ADDR`, agent answers 500", str(broken[0]), str(broken[1])],
    ]
    result = Result(
        f"Publish with only NOMAD_ADDR ({duration_s:g} s per source)",
        ["source", "heartbeats received", "with no servers"],
        rows,
    )
    empty = healthy[1] + broken[1] + static[1]
    result.check(f"{empty} heartbeats with no servers", "0", empty == 0)
    result.check(
        f"{healthy[0]} heartbeats from NOMAD_ADDR alone",
        "> 0 (it follows the agent)",
        healthy[0] > 0,
    )
    result.check(
        f"{broken[0]} heartbeats while the agent fails",
        "0 (a failed fetch publishes nothing)",
        broken[0] == 0,
    )
    result.notes.append(
        f"Each row runs `rpcproxy publish --interval-s {INTERVAL_S}` for {duration_s:g} s with"
        " no other Nomad variable set. Before issue 16 the `NOMAD_ADDR` rows sent one"
        " `servers: []` per period, every one of them empty."
    )
    return result


if __name__ == "__main__":
    print(publish_source().markdown())
