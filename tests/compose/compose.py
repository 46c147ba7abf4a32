"""Drive docker-compose.yml from tests: one fresh compose project per test.

Preparation happens once per pytest session (:func:`prepare_session`): the
wheelhouse is built from this checkout, so is the reference Nomad peer
(``tests/nomad_peer/build.sh``, which installs Go and Nomad's libraries from
Debian's packages when they are missing) that the server stand-ins run, a base
image is chosen (the official ``python:3.11-slim`` when the engine has it, else
a local Debian image made by ``docker/build-base-image.sh``) and
``rpcproxy:local`` is built once. Each
test then gets a :class:`ComposeProject` with a unique project name, brought
up with ``up -d`` and torn down with ``down -v``.

Both Compose flavours work: the ``docker compose`` plugin when it answers,
else the standalone v1 ``docker-compose`` (which has no ``up --wait``, so
health is polled here with ``docker inspect``). Container-level operations
(stop, pause, network, exec, logs) use the plain ``docker`` CLI on the
container found by its compose labels, which is the same in both.

CURVE is on in docker-compose.yml: the one-shot ``keys`` service writes the key
pairs into the project's ``keys`` volume, and :meth:`ComposeProject.up` copies
them out (``docker cp`` from the exited ``keys`` container) so host-side
clients use the ``client`` key like the client container does.

A test may add ``docker-compose.discovery.yml`` to the project's files
(:data:`DISCOVERY_FILES`): a name server (``dns``, dnsmasq from the local
Debian base image) whose records name the servers, a proxy with DNS discovery
on, and stand-ins that ``up`` leaves for the test to start
(:meth:`ComposeProject.start_later`). :func:`prepare_discovery` builds what it
adds, once per session.

Nothing here sleeps blindly: waiting is polling with a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from rpcproxy.bus.client import ProxyClient, ProxyError
from rpcproxy.bus.net.keys import CurveClient
from tests.nomadpeer import PeerError, build_peer
from tests.waiting import poll_until

REPO: Final = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Final = REPO / "docker-compose.yml"
DISCOVERY_FILE: Final = REPO / "docker-compose.discovery.yml"
DISCOVERY_FILES: Final = (COMPOSE_FILE, DISCOVERY_FILE)
"""docker-compose.yml with the name server and discovery on (see that file)."""
WHEELHOUSE: Final = REPO / "wheelhouse"
BASE_IMAGE_SCRIPT: Final = REPO / "docker" / "build-base-image.sh"

OFFICIAL_BASE_IMAGE: Final = "python:3.11-slim"
LOCAL_BASE_IMAGE: Final = "rpcproxy-base:bookworm"
IMAGE: Final = "rpcproxy:local"
"""The image every service of docker-compose.yml runs."""

SERVERS: Final = ("server1:4647", "server2:4647", "server3:4647")
"""The server addresses the publisher announces (container DNS names)."""
SERVER_SERVICES: Final = ("server1", "server2", "server3")
"""The Nomad-server stand-ins: each runs the reference Go peer."""
NOMAD_PEER_IN_IMAGE: Final = "/usr/local/bin/nomad-peer"
"""Where the Dockerfile puts the peer (copied from the host's ``build/nomad-peer``)."""

QUERY_PORT: Final = 4650
HEARTBEAT_PORT: Final = 4651
METRICS_PORT: Final = 4653
ONE_SHOT_SERVICES: Final = frozenset({"keys"})
"""Services that run once and must exit 0 (the others keep running)."""
KEYS_SERVICE: Final = "keys"
KEYS_DIR_IN_CONTAINER: Final = "/keys"
PROXY_PUBLIC_KEY: Final = "proxy.key"
CLIENT_CERT: Final = "client.key_secret"
"""The certificate host-side clients use: the client container's, which is allowed."""
UP_TIMEOUT_S: Final = 90.0
"""How long every service may take to be healthy (or running) after ``up``."""

DNS_SERVICE: Final = "dns"
DNS_IMAGE: Final = "rpcproxy-dns:local"
"""The name server's image: docker/dns/ on the local Debian base image."""
DNS_SRV_NAME: Final = "_nomad._rpc.nomad.test"
"""The SRV name the name server answers and the discovery proxy asks."""
DNS_PORT: Final = 53
MOVED_SERVICES: Final = ("server4", "server5", "server6")
"""docker-compose.discovery.yml's stand-ins of profile ``moved``: not started by
``up``, they are where the servers move to."""

_T = TypeVar("_T")


class ComposeError(RuntimeError):
    """A docker or compose command failed, or the project did not come up."""


# --------------------------------------------------------------------------
# Small helpers.


def wait_for(
    predicate: Callable[[], _T | None],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> _T:
    """:func:`tests.waiting.poll_until` with this module's argument order."""
    return poll_until(predicate, timeout_s, interval_s, what)


def hold_for(predicate: Callable[[], bool], duration_s: float, what: str) -> None:
    """Check that ``predicate`` stays true for ``duration_s``, polling it.

    Raises:
        AssertionError: it was false once; the message names ``what``.
    """
    deadline = time.monotonic() + duration_s
    pause = threading.Event()
    while True:
        if not predicate():
            raise AssertionError(f"no longer true: {what}")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        pause.wait(min(0.1, left))


def run(
    cmd: Sequence[str],
    *,
    timeout_s: float = 60.0,
    check: bool = True,
    env: dict[str, str] | None = None,
    merge_stderr: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the repository, capturing its output as text.

    Raises:
        ComposeError: ``check`` and a non-zero exit, or the timeout passed.
    """
    try:
        done = subprocess.run(
            list(cmd),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"{' '.join(cmd)}: no exit within {timeout_s:g} s") from exc
    if check and done.returncode != 0:
        raise ComposeError(
            f"{' '.join(cmd)} exited {done.returncode}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr or ''}"
        )
    return done


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine and a compose command answer; else why not."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout_s=20, check=False)
    except ComposeError as exc:
        return f"no Docker engine answers: {exc}"
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers (`docker info`: {detail[-1] if detail else '?'})"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is available"
    return None


def compose_command() -> list[str] | None:
    """``docker compose`` when the plugin answers, else ``docker-compose``, else None."""
    try:
        plugin = run(["docker", "compose", "version"], timeout_s=20, check=False)
    except (ComposeError, OSError):
        plugin = None
    if plugin is not None and plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    return None


def image_exists(tag: str) -> bool:
    return image_id(tag) is not None


def image_id(tag: str) -> str | None:
    """The id of the image ``tag`` names, or None when there is none."""
    done = run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=False)
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


# --------------------------------------------------------------------------
# Session preparation.


@dataclass(frozen=True, slots=True)
class ComposeSetup:
    """What every project of the session shares: the command and the image's base."""

    command: tuple[str, ...]
    base_image: str

    @property
    def env(self) -> dict[str, str]:
        """The environment compose runs with (the image's build argument)."""
        return {**os.environ, "BASE_IMAGE": self.base_image}


def build_wheelhouse() -> None:
    """Wheels of this checkout and its dependencies into ``wheelhouse/``.

    Built in a temporary directory first, so a failed build keeps the old one.
    ``SOURCE_DATE_EPOCH`` makes the wheel reproducible: unchanged sources give
    the same bytes, so the image build reuses its cached layers.
    """
    env = {**os.environ}
    env.setdefault("SOURCE_DATE_EPOCH", "315532800")  # 1980-01-01, the zip epoch
    with tempfile.TemporaryDirectory(prefix="rpcproxy-wheels-") as tmp:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--wheel-dir",
                tmp,
                str(REPO),
            ],
            env=env,
            timeout_s=600,
        )
        shutil.rmtree(WHEELHOUSE, ignore_errors=True)
        shutil.copytree(tmp, WHEELHOUSE)


def build_nomad_peer() -> Path:
    """The static Go peer at ``build/nomad-peer``, where the Dockerfile copies it from.

    Raises:
        ComposeError: the build failed (its output is in the message).
    """
    try:
        built = build_peer()
    except PeerError as exc:
        raise ComposeError(f"the Nomad peer the server stand-ins run: {exc}") from exc
    return built


def choose_base_image() -> str:
    """``python:3.11-slim`` when present, else the local Debian image (built if needed)."""
    if image_exists(OFFICIAL_BASE_IMAGE):
        return OFFICIAL_BASE_IMAGE
    if not image_exists(LOCAL_BASE_IMAGE):
        run([str(BASE_IMAGE_SCRIPT), LOCAL_BASE_IMAGE], timeout_s=1200)
    return LOCAL_BASE_IMAGE


def prepare_session() -> ComposeSetup:
    """Once per session: wheelhouse, Go peer, base image, and ``rpcproxy:local`` built once.

    Raises:
        ComposeError: no compose command, or a build step failed.
    """
    command = compose_command()
    if command is None:
        raise ComposeError("neither `docker compose` nor `docker-compose` is available")
    build_wheelhouse()
    build_nomad_peer()
    setup = ComposeSetup(tuple(command), choose_base_image())
    previous = image_id(IMAGE)
    # Every service shares the one image (rpcproxy:local), so building one builds it.
    run(
        [*setup.command, "-f", str(COMPOSE_FILE), "-p", "rpcproxybuild", "build", "proxy"],
        env=setup.env,
        timeout_s=900,
    )
    if previous is not None and previous != image_id(IMAGE):
        # The image this build replaced, now untagged; kept if a container still uses it.
        run(["docker", "image", "rm", previous], check=False)
    return setup


def prepare_discovery(setup: ComposeSetup) -> None:
    """Once per session, for :data:`DISCOVERY_FILES`: the name server's image.

    It is built from the local Debian base image whatever base
    ``rpcproxy:local`` uses, since that image holds dnsmasq
    (``docker/build-base-image.sh`` makes it, or makes it again when it was
    made without dnsmasq, and says so when it is already right). The build is
    two small files on that image's layers, cached by the engine.

    Raises:
        ComposeError: a build step failed.
    """
    run([str(BASE_IMAGE_SCRIPT), LOCAL_BASE_IMAGE], timeout_s=1200)
    previous = image_id(DNS_IMAGE)
    files = [arg for file in DISCOVERY_FILES for arg in ("-f", str(file))]
    run(
        [*setup.command, *files, "-p", "rpcproxybuild", "build", DNS_SERVICE],
        env=setup.env,
        timeout_s=600,
    )
    if previous is not None and previous != image_id(DNS_IMAGE):
        run(["docker", "image", "rm", previous], check=False)


# --------------------------------------------------------------------------
# Client-loop records.


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """One line of ``rpcproxy client-loop``: a lookup and what came of it."""

    t: float
    server: str | None
    ok: bool | None
    rotated: bool | None
    error: str | None

    @classmethod
    def parse(cls, line: str) -> ClientRecord | None:
        """The record on ``line``, or None when the line is not one."""
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            raw: Any = json.loads(line)
        except ValueError:
            return None
        if not isinstance(raw, dict) or "t" not in raw:
            return None
        return cls(
            t=float(raw["t"]),
            server=raw.get("server"),
            ok=raw.get("ok"),
            rotated=raw.get("rotated"),
            error=raw.get("error"),
        )


# --------------------------------------------------------------------------
# One project.


class ComposeProject:
    """One compose project of docker-compose.yml, with a unique ``-p`` name.

    Args:
        setup: the session's compose command and base image.
        name: the project name (a fresh one by default).
        files: the compose files, in order (later ones override earlier ones).
        later: services ``up`` does not start (a profile's); :meth:`wait_ready`
            waits for them only once :meth:`start_later` has started them.
    """

    def __init__(
        self,
        setup: ComposeSetup,
        name: str | None = None,
        *,
        files: Sequence[Path] = (COMPOSE_FILE,),
        later: Sequence[str] = (),
    ) -> None:
        self.setup = setup
        # Lower-case letters and digits only: both compose versions keep it as is.
        self.name = name or f"rpcproxyt{secrets.token_hex(4)}"
        self.files = tuple(files)
        self.later = frozenset(later)
        self._started_later: set[str] = set()
        self._containers: dict[str, str] = {}
        self._keys_dir: Path | None = None

    # -- compose -------------------------------------------------------------

    def compose(
        self, *args: str, timeout_s: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<compose> -f <file>... -p <name> ARGS``."""
        files = [arg for file in self.files for arg in ("-f", str(file))]
        cmd = [*self.setup.command, *files, "-p", self.name, *args]
        return run(cmd, env=self.setup.env, timeout_s=timeout_s, check=check)

    def services(self) -> list[str]:
        return self.compose("config", "--services").stdout.split()

    def up(self, timeout_s: float = UP_TIMEOUT_S) -> None:
        """``up -d`` and wait until every service is healthy (or running, without a check).

        Raises:
            ComposeError: a service is not ready by the deadline or exited; the
                message holds ``ps`` and every service's logs.
        """
        started = time.monotonic()
        try:
            self.compose("up", "-d", "--no-build", timeout_s=timeout_s + 60)
            self.wait_ready(timeout_s - (time.monotonic() - started))
            self.fetch_keys()
        except (ComposeError, AssertionError) as exc:
            raise ComposeError(f"{self.name} did not come up: {exc}\n{self.diagnostics()}") from exc

    def start_later(self, *services: str, timeout_s: float = UP_TIMEOUT_S) -> None:
        """Start services ``up`` left out (``up -d --no-deps`` naming them) and wait
        until each is healthy, or running without a check.

        Raises:
            ComposeError: one is not ready by the deadline, or exited.
        """
        unknown = set(services) - self.later
        if unknown:
            raise ComposeError(f"{sorted(unknown)} are not among the later services")
        started = time.monotonic()
        self.compose("up", "-d", "--no-deps", "--no-build", *services, timeout_s=timeout_s + 60)
        self._started_later.update(services)
        try:
            self.wait_ready(timeout_s - (time.monotonic() - started), services)
        except ComposeError as exc:
            raise ComposeError(f"{exc}\n{self.diagnostics()}") from exc

    def wait_ready(self, timeout_s: float, services: Sequence[str] | None = None) -> None:
        """Poll ``docker inspect`` until each service is healthy, or running without a check.

        ``services``: those to wait for; by default every service of the
        project but the later ones not yet started.
        """
        if services is None:
            services = [
                service
                for service in self.services()
                if service not in self.later or service in self._started_later
            ]
        pending: dict[str, str] = {}

        def ready() -> bool:
            pending.clear()
            for service in services:
                state = self.state(service)
                status = _readiness(state)
                if service in ONE_SHOT_SERVICES:
                    status = _completion(state)
                if status == "exited":
                    raise ComposeError(f"service {service} stopped: {json.dumps(state)}")
                if status != "ready":
                    pending[service] = status
            return not pending

        try:
            wait_for(ready, max(timeout_s, 1.0), "every service ready", interval_s=0.5)
        except AssertionError as exc:
            raise ComposeError(f"{exc}; not ready: {pending}") from exc

    def down(self) -> None:
        """``down -v -t 1``; paused containers are unpaused first so they can stop."""
        for service in self._containers:
            if self.state(service).get("Paused"):
                run(["docker", "unpause", self._containers[service]], check=False)
        self.compose("down", "-v", "-t", "1", "--remove-orphans", timeout_s=120, check=False)
        if self._keys_dir is not None:
            shutil.rmtree(self._keys_dir, ignore_errors=True)
            self._keys_dir = None

    def diagnostics(self) -> str:
        """``ps`` and the logs of every container, for a failure message."""
        parts = [self.compose("ps", check=False, timeout_s=30).stdout]
        for service in self._service_names_or_empty():
            parts.append(f"--- logs of {service} ---\n{self.logs(service, tail=100)}")
            health = self.state(service).get("Health") or {}
            for check in (health.get("Log") or [])[-3:]:
                parts.append(
                    f"--- health check of {service} at {check.get('Start')}: "
                    f"exit {check.get('ExitCode')} ---\n{check.get('Output', '').strip()}"
                )
        return "\n".join(parts)

    def _service_names_or_empty(self) -> list[str]:
        try:
            return self.services()
        except ComposeError:
            return []

    # -- containers ----------------------------------------------------------

    def container(self, service: str) -> str:
        """The name of ``service``'s container (found by its compose labels)."""
        if service not in self._containers:
            found = run(
                [
                    "docker",
                    "ps",
                    "-a",
                    "--filter",
                    f"label=com.docker.compose.project={self.name}",
                    "--filter",
                    f"label=com.docker.compose.service={service}",
                    "--format",
                    "{{.Names}}",
                ]
            ).stdout.split()
            if len(found) != 1:
                raise ComposeError(f"{self.name}: expected one {service} container, found {found}")
            self._containers[service] = found[0]
        return self._containers[service]

    def state(self, service: str) -> dict[str, Any]:
        """``docker inspect``'s ``.State`` of ``service``'s container ({} when it has none)."""
        try:
            name = self.container(service)
        except ComposeError:
            return {}
        done = run(["docker", "inspect", "--format", "{{json .State}}", name], check=False)
        if done.returncode != 0:
            return {}
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def docker(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``docker ARGS`` and return its stdout."""
        return run(["docker", *args], timeout_s=timeout_s).stdout

    def stop(self, service: str, timeout_s: int = 1) -> None:
        self.docker("stop", "-t", str(timeout_s), self.container(service))

    def restart(self, service: str, timeout_s: int = 2) -> None:
        self.docker("restart", "-t", str(timeout_s), self.container(service))

    def pause(self, service: str) -> None:
        self.docker("pause", self.container(service))

    def unpause(self, service: str) -> None:
        self.docker("unpause", self.container(service))

    @functools.cached_property
    def network(self) -> str:
        """The project's default network."""
        found = self.docker(
            "network",
            "ls",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
            "--filter",
            "label=com.docker.compose.network=default",
            "--format",
            "{{.Name}}",
        ).split()
        return found[0] if found else f"{self.name}_default"

    def disconnect(self, service: str) -> None:
        """Take ``service`` off the project's network (it keeps running)."""
        self.docker("network", "disconnect", self.network, self.container(service))

    def connect(self, service: str) -> None:
        """Put ``service`` back on the network, with its service name as DNS alias."""
        self.docker("network", "connect", "--alias", service, self.network, self.container(service))

    def ip_address(self, service: str) -> str | None:
        """``service``'s address on the project's network; None while it has none
        (stopped, or disconnected from the network)."""
        done = run(
            [
                "docker",
                "inspect",
                "--format",
                "{{json .NetworkSettings.Networks}}",
                self.container(service),
            ],
            check=False,
        )
        if done.returncode != 0:
            return None
        networks: dict[str, Any] = json.loads(done.stdout) or {}
        found = networks.get(self.network) or {}
        address = str(found.get("IPAddress") or "")
        return address or None

    def environment(self, service: str) -> dict[str, str]:
        """The environment ``service``'s container was created with."""
        out = self.docker("inspect", "--format", "{{json .Config.Env}}", self.container(service))
        pairs: list[str] = json.loads(out) or []
        return dict(pair.partition("=")[::2] for pair in pairs)

    def exec(self, service: str, *cmd: str, timeout_s: float = 30.0) -> str:
        """Run ``cmd`` in ``service``'s container; return its stdout."""
        return self.docker("exec", self.container(service), *cmd, timeout_s=timeout_s)

    def main_process(self, service: str) -> tuple[str, list[str]]:
        """What ``service``'s container really runs as PID 1: its executable and argv.

        Read from ``/proc/1`` inside the container rather than from the
        container's configuration, so a wrapper or an overridden entrypoint
        cannot pass for the program itself.
        """
        exe = self.exec(service, "readlink", "/proc/1/exe").strip()
        argv = self.exec(service, "cat", "/proc/1/cmdline").split("\0")
        return exe, [arg for arg in argv if arg]

    def proxy_ping_method(self) -> str:
        """The ``ping_method`` the running proxy was configured with."""
        return self.proxy_setting("ping_method")

    def proxy_setting(self, key: str) -> str:
        """The running proxy's ``key``, as text (a list's items joined by commas).

        The proxy's own flags and environment (``/proc/1``) go through the
        same parser and ``load_config`` as ``rpcproxy serve``, inside its
        container, so defaults, variables and flags count exactly as there.
        """
        return self.exec("proxy", "python", "-c", _EFFECTIVE_SETTING, key).strip()

    def go_peer_problems(self) -> list[str]:
        """Why the server stand-ins are not Go Nomad peers probed with ``nomad``
        ([] when they are): each runs the image's ``nomad-peer`` as its main
        process, and the proxy's effective ``ping_method`` is ``nomad``."""
        problems: list[str] = []
        for service in SERVER_SERVICES:
            exe, argv = self.main_process(service)
            if exe != NOMAD_PEER_IN_IMAGE:
                problems.append(f"{service} runs {exe} {argv}, not {NOMAD_PEER_IN_IMAGE}")
        method = self.proxy_ping_method()
        if method != "nomad":
            problems.append(f"the proxy pings its servers with {method!r}, not 'nomad'")
        return problems

    def logs(self, service: str, tail: int | None = None, since: float | None = None) -> str:
        """``service``'s container output, stdout and stderr together ("" if none).

        ``since``: only what was written from this wall-clock time on (``time.time()``).
        """
        try:
            name = self.container(service)
        except ComposeError as exc:
            return f"(no container: {exc})"
        args = [
            "docker",
            "logs",
            *(["--tail", str(tail)] if tail is not None else []),
            *(["--since", f"{since:.6f}"] if since is not None else []),
            name,
        ]
        return run(args, check=False, merge_stderr=True, timeout_s=30).stdout

    def client_records(self) -> list[ClientRecord]:
        """Every lookup the ``client`` service's client-loop has printed so far."""
        done = run(["docker", "logs", self.container("client")], check=False, timeout_s=30)
        records = (ClientRecord.parse(line) for line in done.stdout.splitlines())
        return [record for record in records if record is not None]

    # -- CURVE keys ----------------------------------------------------------

    def fetch_keys(self) -> Path:
        """Copy the ``keys`` volume to a host directory (once); return the directory.

        ``docker cp`` works on the exited ``keys`` container and reads its
        volume; the copies belong to the user running the tests.
        """
        if self._keys_dir is None:
            target = Path(tempfile.mkdtemp(prefix=f"{self.name}-keys-"))
            try:
                self.docker(
                    "cp", f"{self.container(KEYS_SERVICE)}:{KEYS_DIR_IN_CONTAINER}/.", str(target)
                )
            except ComposeError:
                shutil.rmtree(target, ignore_errors=True)
                raise
            self._keys_dir = target
        return self._keys_dir

    @property
    def keys_dir(self) -> Path:
        """The host copy of the keys volume (see :meth:`fetch_keys`)."""
        return self.fetch_keys()

    def curve(self, cert: str = CLIENT_CERT) -> CurveClient:
        """The proxy's public key and the certificate ``cert`` of the keys volume."""
        return CurveClient.from_files(self.keys_dir / PROXY_PUBLIC_KEY, self.keys_dir / cert)

    # -- the proxy -----------------------------------------------------------

    def published_port(self, port: int, service: str = "proxy") -> int:
        """The host's loopback port published for ``service``'s ``port`` (looked up
        every time: a restarted container may get a new ephemeral port)."""
        out = self.docker("port", self.container(service), f"{port}/tcp")
        for line in out.splitlines():
            host, _, published = line.strip().rpartition(":")
            if host in {"127.0.0.1", "0.0.0.0"}:
                return int(published)
        raise ComposeError(f"{service}'s port {port} is not published on IPv4: {out!r}")

    def query_endpoint(self) -> str:
        """The proxy's query socket as published on the host."""
        return f"tcp://127.0.0.1:{self.published_port(QUERY_PORT)}"

    def heartbeat_endpoint(self) -> str:
        """The proxy's heartbeat SUB socket as published on the host."""
        return f"tcp://127.0.0.1:{self.published_port(HEARTBEAT_PORT)}"

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        """The proxy's Prometheus exposition (``GET /metrics`` on the published port)."""
        url = f"http://127.0.0.1:{self.published_port(METRICS_PORT)}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: bytes = response.read()
        return body.decode()

    def client(
        self,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        curve: CurveClient | None = None,
    ) -> ProxyClient:
        """A :class:`ProxyClient` of the proxy's published query port (close it).

        It speaks CURVE with the ``client`` certificate unless ``curve`` names
        other keys.
        """
        return ProxyClient(
            self.query_endpoint(),
            timeout_s=timeout_s,
            retries=retries,
            curve=curve if curve is not None else self.curve(),
        )

    @contextlib.contextmanager
    def proxy(self, *, timeout_s: float = 5.0, retries: int = 2) -> Iterator[ProxyClient]:
        """A client for calls that must succeed: tries long enough for a loaded host."""
        with self.client(timeout_s=timeout_s, retries=retries) as client:
            yield client

    def answers_ping(self) -> bool:
        """Whether the proxy answers a ping now (quickly; never raises)."""
        try:
            with self.client(timeout_s=0.5, retries=1) as client:
                return client.ping()
        except (ProxyError, ComposeError):
            return False

    def active_servers(self) -> list[str] | None:
        """The proxy's active list, or None when it does not answer."""
        try:
            with self.client(timeout_s=1.0, retries=1) as client:
                return [server.addr for server in client.servers()]
        except (ProxyError, ComposeError):
            return None

    def wait_for_servers(self, expected: Sequence[str] = SERVERS, timeout_s: float = 15.0) -> None:
        """Wait until the proxy's active list holds exactly ``expected`` (any order)."""
        wanted = sorted(expected)
        wait_for(
            lambda: sorted(self.active_servers() or []) == wanted,
            timeout_s,
            f"the proxy to know {wanted}",
        )


_EFFECTIVE_SETTING: Final = """
import sys
from pathlib import Path
from rpcproxy.cli.config import load_config
from rpcproxy.cli.main import build_parser
argv = [a.decode() for a in Path("/proc/1/cmdline").read_bytes().split(b"\\0") if a]
env = dict(
    e.decode().partition("=")[::2]
    for e in Path("/proc/1/environ").read_bytes().split(b"\\0")
    if b"=" in e
)
args = build_parser().parse_args(argv[argv.index("serve"):])
value = getattr(load_config(args, env), sys.argv[1])
print(",".join(map(str, value)) if isinstance(value, tuple) else value)
"""
"""Run by the proxy container's Python: one of the serving process's effective settings."""


def _completion(state: dict[str, Any]) -> str:
    """A one-shot service's readiness: "ready" once it exited 0, "exited" on failure."""
    if not state:
        return "missing"
    if state.get("Status") in {"exited", "dead"}:
        return "ready" if state.get("ExitCode") == 0 else "exited"
    return str(state.get("Status", "not started"))


def _readiness(state: dict[str, Any]) -> str:
    """ "ready", "exited" or a word saying what the container still waits for."""
    if not state:
        return "missing"
    if state.get("Status") in {"exited", "dead"}:
        return "exited"
    if not state.get("Running"):
        return str(state.get("Status", "not running"))
    health = state.get("Health")
    if health is None:
        return "ready"
    status = str(health.get("Status"))
    return "ready" if status == "healthy" else status
