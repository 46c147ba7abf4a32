"""A proxy loads only what its configuration uses (issue 20's idle memory).

``serve`` with neither TLS, metrics, discovery nor a Nomad API address loads
no ssl, no OpenSSL (hashlib), no HTTP or DNS client, no Prometheus client,
no asyncio and no numpy: between them they were over 10 MiB of an idle
proxy's 38 MiB. Each is loaded, lazily, by the configuration that needs it;
the second test shows this check sees such a load.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tests.helpers import free_port
from tests.integration.serving import Serve

WRAPPER = str(Path(__file__).with_name("modules_serve.py"))

NEVER_IDLE = (
    "ssl",
    "_ssl",
    "hashlib",
    "_hashlib",
    "httpx",
    "dns",
    "prometheus_client",
    "asyncio",
    "numpy",
)
"""Modules (and packages: their submodules too) a plain proxy does without."""


def _loaded(serve_factory: Callable[..., Serve], tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.txt"
    serve = serve_factory(*args, command=(sys.executable, WRAPPER, str(out)))
    serve.call("status")  # a read, and a write below: the paths are all in use
    serve.call("add_primary_server", addr="127.0.0.1:1")
    assert serve.stop() == 0, serve.stderr()
    return set(out.read_text(encoding="utf-8").split())


def _heavy(loaded: set[str]) -> set[str]:
    return {m for m in loaded if m.split(".")[0] in NEVER_IDLE}


def test_a_plain_proxy_loads_none_of_the_optional_parts(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    loaded = _loaded(serve_factory, tmp_path, "--primary-servers", "127.0.0.1:2")
    assert "rpcproxy.bus.service.query" in loaded  # the list is serve's own
    assert _heavy(loaded) == set()


def test_metrics_load_the_prometheus_client(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    port = free_port()
    loaded = _loaded(serve_factory, tmp_path, "--metrics", f"127.0.0.1:{port}")
    assert "prometheus_client" in _heavy(loaded)
