"""Benchmark: ``serve`` restoring a state file far over ``max_servers`` (issue 16, item 6).

Before issue 16 a state file of 50,001 primaries loaded whole, and every
later add was refused. Now the first ``max_servers`` (4096 by default) of its
active list are kept, with one warning. Measured: the time from exec to the
first answered ``ping`` with that file, against the same ``serve`` restoring
a file of exactly ``max_servers`` servers (alternating rounds), and what the
proxy holds afterwards.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import Result, Spread, call, running_serve

SAVED = 50_001
MAX_SERVERS = 4096


def _names(count: int) -> list[str]:
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:4647" for i in range(1, count + 1)]


def _plant(path: Path, primaries: list[str]) -> None:
    """A state file in the format ``serve`` writes (actors/persist.py)."""
    document = {
        "format": 1,
        "active": primaries,
        "primaries": primaries,
        "backups": [],
        "leader_addr": primaries[0],
        "num_nodes": 7,
    }
    path.write_text(json.dumps(document))


def _start(path: Path, primaries: list[str]) -> tuple[float, int, int, bool]:
    """Seconds to the first ping, servers held, cut warnings, and whether an add works."""
    # Planted anew each time: the proxy writes its cut state back on the first save.
    _plant(path, primaries)
    begin = time.monotonic()
    with running_serve("--state-file", str(path)) as serve:
        started = time.monotonic() - begin
        servers = [s["addr"] for s in call(serve.query, "servers", timeout_s=30)["servers"]]
        call(serve.query, "remove_server", addr=servers[-1])
        added = call(serve.query, "add_primary_server", addr="10.255.255.254:4647")["ok"]
        warnings = serve.log().count("more than max_servers")
    return started, len(servers), warnings, bool(added)


def state_file(rounds: int = 3) -> Result:
    with tempfile.TemporaryDirectory(prefix="rpcproxy-bench-state-") as tmp:
        path = Path(tmp, "state.json")
        names = _names(SAVED)
        big_runs: list[tuple[float, int, int, bool]] = []
        full_runs: list[tuple[float, int, int, bool]] = []
        for index in range(rounds):
            pair = [(names, big_runs), (names[:MAX_SERVERS], full_runs)]
            for saved, runs in pair if index % 2 == 0 else pair[::-1]:
                runs.append(_start(path, saved))
    big_s = Spread.of([r[0] for r in big_runs])
    full_s = Spread.of([r[0] for r in full_runs])
    ratio = Spread.of([b[0] / f[0] for b, f in zip(big_runs, full_runs, strict=True)])
    result = Result(
        f"State file of {SAVED:,} servers under max_servers {MAX_SERVERS}",
        ["state file", "exec to first ping (s)", "servers held", "cut warnings", "add works"],
        [
            [
                f"{MAX_SERVERS:,} servers (baseline)",
                full_s.fmt(2),
                str(full_runs[0][1]),
                str(full_runs[0][2]),
                str(full_runs[0][3]),
            ],
            [
                f"{SAVED:,} servers",
                big_s.fmt(2),
                str(big_runs[0][1]),
                str(big_runs[0][2]),
                str(big_runs[0][3]),
            ],
            ["**ratio**", ratio.fmt(2), "", "", ""],
        ],
    )
    held = {r[1] for r in big_runs}
    result.check(
        f"servers held {sorted(held)}", f"{MAX_SERVERS} every round", held == {MAX_SERVERS}
    )
    warned = {r[2] for r in big_runs}
    result.check(f"cut warnings {sorted(warned)}", "1 per start", warned == {1})
    result.check(
        f"add after a removal works in {sum(r[3] for r in big_runs)} of {rounds} rounds",
        "every round",
        all(r[3] for r in big_runs),
    )
    result.report(f"start-up with {SAVED:,} saved / with {MAX_SERVERS:,}: {ratio.fmt(2)}")
    result.notes.append(
        f"{rounds} alternating rounds; each starts `rpcproxy serve --state-file` on the file,"
        " times exec to the first answered `ping`, reads `servers`, removes the last one and"
        " adds a new primary (refused before issue 16, when all 50,001 loaded)."
    )
    return result


if __name__ == "__main__":
    print(state_file().markdown())
