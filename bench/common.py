"""Shared pieces of the benchmarks: processes, threads, sockets, statistics, the machine.

Not a package: the scripts in this directory run with the project's venv
python (``python bench/run.py``), which puts this directory on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import report as bench_report
import zmq

BENCH_DIR = Path(__file__).resolve().parent
CTX: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
START_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------
# Statistics.


@dataclass(frozen=True)
class Spread:
    """Median and range of one quantity measured over several rounds."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Result:
    """One benchmark's outcome, printable and writable as Markdown."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[tuple[str, str, bool | None]] = field(default_factory=list)
    """(figure, target, met); met is None for a figure reported without a target."""
    notes: list[str] = field(default_factory=list)

    def check(self, figure: str, target: str, met: bool) -> None:
        self.verdicts.append((figure, target, met))

    def report(self, figure: str) -> None:
        """A figure with no target: shown ("-" in "met"), never counted as a target met."""
        self.verdicts.append((figure, bench_report.NO_TARGET, None))

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines.append(bench_report.row(self.headers))
        lines.append("| " + " | ".join("---" for _ in self.headers) + " |")
        lines += [bench_report.row(r) for r in self.rows]
        if self.verdicts:
            lines += ["", *bench_report.verdict_table(self.verdicts)]
        if self.notes:
            lines.append("")
            lines += self.notes
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# The machine.


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    """HEAD, and whether the working tree differs from it: what a run measured."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        ).stdout

    try:
        head = git("rev-parse", "HEAD").strip()
        changes = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    modified = sum(1 for line in changes if not line.startswith("??"))
    untracked = len(changes) - modified
    if not changes:
        return f"{head} (clean)"
    # Untracked files are counted too: a new module is measured only once
    # something tracked imports it, but the reader should know it was there.
    return f"{head} (dirty: {modified} changed, {untracked} untracked files)"


def machine_description() -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("pyzmq / libzmq", f"{zmq.__version__} / {zmq.zmq_version()}"),
        ("msgspec", _version("msgspec")),
        ("msgpack", _version("msgpack")),
        ("pykka", _version("pykka")),
    ]


# --------------------------------------------------------------------------
# Addresses, MessagePack and a process's RSS: the tests' own helpers
# (tests/helpers.py, tests/procfs.py), one copy for both, reached through the
# repository root as tests/soak does.

if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

# The benchmarks import these from here: the "x as x" form re-exports them
# (mypy --strict reads a plain import as private to this module).
from tests.helpers import free_port as free_port  # noqa: E402, PLC0414
from tests.helpers import pack as pack  # noqa: E402, PLC0414
from tests.helpers import tcp as tcp  # noqa: E402, PLC0414
from tests.helpers import unpack as unpack  # noqa: E402, PLC0414
from tests.procfs import vm_rss_kib as vm_rss_kib  # noqa: E402, PLC0414


def request(endpoint: str, message: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """One REQ round trip; raises TimeoutError when nobody answers."""
    sock: zmq.Socket[bytes] = CTX.socket(zmq.REQ)
    try:
        sock.linger = 0
        sock.connect(endpoint)
        sock.send(pack(message))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply from {endpoint} within {timeout_s} s")
        reply = unpack(sock.recv())
    finally:
        sock.close()
    if not isinstance(reply, dict):
        raise TypeError(f"reply is not a map: {reply!r}")
    return reply


def call(endpoint: str, op: str, timeout_s: float = 5.0, **keys: Any) -> dict[str, Any]:
    reply = request(endpoint, {"op": op, **keys}, timeout_s)
    if reply.get("ok") is not True:
        raise RuntimeError(f"{op} failed: {reply!r}")
    return reply


# --------------------------------------------------------------------------
# Processes.


def rpcproxy_path() -> str:
    """The ``rpcproxy`` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "rpcproxy"
    if beside.exists():
        return str(beside)
    found = shutil.which("rpcproxy")
    if found is None:
        raise FileNotFoundError("rpcproxy is not installed in this venv nor on PATH")
    return found


def script(name: str, *args: str) -> list[str]:
    """The argv running ``bench/<name>`` with this interpreter."""
    return [sys.executable, str(BENCH_DIR / name), *args]


@dataclass
class Serve:
    """A running ``rpcproxy serve`` with the endpoints it was given."""

    proc: subprocess.Popen[bytes]
    query: str
    heartbeat: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_ping(serve: Serve, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.proc.poll() is not None:
            raise RuntimeError(f"rpcproxy exited with {serve.proc.returncode}:\n{serve.log()}")
        with contextlib.suppress(TimeoutError):
            request(serve.query, {"op": "ping"}, timeout_s=0.2)
            return
    raise RuntimeError(f"rpcproxy did not answer ping within {timeout_s} s:\n{serve.log()}")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM one process we started, SIGKILL it if it does not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_serve(*args: str, prefix: Sequence[str] = ()) -> Iterator[Serve]:
    """Start ``rpcproxy serve`` on fresh loopback ports, wait for ping, stop after.

    ``prefix`` runs it through another command (``unshare ...``) that ends by
    exec-ing the rest of its arguments, so signals still reach ``serve``.
    """
    query, heartbeat = tcp(free_port()), tcp(free_port())
    argv = [*prefix, rpcproxy_path(), "serve", "--query", query, "--heartbeat-bind", heartbeat]
    argv += ["--events", "", *args]
    with tempfile.NamedTemporaryFile(prefix="rpcproxy-bench-", suffix=".log", delete=False) as f:
        log_path = Path(f.name)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    serve = Serve(proc, query, heartbeat, log_path)
    try:
        _wait_ping(serve, START_TIMEOUT_S)
        yield serve
    finally:
        stop_process(proc)
        log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_script(name: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``bench/<name>`` in its own process for the duration of the block."""
    proc = subprocess.Popen(script(name, *args), stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc)


def sigterm_to_exit_ms(proc: subprocess.Popen[bytes], wait_s: float) -> float:
    """Milliseconds from SIGTERM until the process has exited, to within microseconds.

    ``Popen.wait(timeout)`` sleeps in doubling steps (about 1, 3, 7, 15, 31,
    63 ms, then every 50 ms) between its checks, so it reported those steps,
    not the exit. A pidfd becomes readable the moment the process exits (a
    zombie, before it is reaped), and ``poll`` on it wakes at once.
    """
    pidfd = os.pidfd_open(proc.pid)  # before the signal: the pid is surely ours
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        begin = time.perf_counter_ns()
        proc.send_signal(signal.SIGTERM)
        if not poller.poll(int(wait_s * 1000)):
            raise RuntimeError(f"serve still running {wait_s:g} s after SIGTERM")
        elapsed_ms = (time.perf_counter_ns() - begin) / 1e6
    finally:
        os.close(pidfd)
    proc.wait(wait_s)  # reaps it: it has exited already
    if proc.returncode != 0:
        raise RuntimeError(f"serve exited with {proc.returncode} after SIGTERM")
    return elapsed_ms


class Requester:
    """A persistent REQ socket for many round trips from one thread."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._sock: zmq.Socket[bytes] = CTX.socket(zmq.REQ)
        self._sock.linger = 0
        self._sock.connect(endpoint)

    def call(self, op: str, timeout_s: float = 5.0, **keys: Any) -> dict[str, Any]:
        self._sock.send(pack({"op": op, **keys}))
        if not self._sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply to {op} from {self.endpoint} within {timeout_s} s")
        reply = unpack(self._sock.recv())
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            raise RuntimeError(f"{op} failed: {reply!r}")
        return reply

    def close(self) -> None:
        self._sock.close()


# --------------------------------------------------------------------------
# Threads.


class Background:
    """A loop on a daemon thread for the length of a ``with`` block.

    A subclass writes :meth:`_loop`, which ends once ``_stop`` is set. What
    the loop raises is kept and raised again by ``__exit__``, on the
    caller's thread: a benchmark never reports the figures of a loop that
    died halfway.

    Args:
        name: what the error raised on exit calls it ("the changer").
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.error is not None:
            raise RuntimeError(f"{self._name} failed") from self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by __exit__, on the caller's thread
            self.error = exc

    def _loop(self) -> None:
        raise NotImplementedError
