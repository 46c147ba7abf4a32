"""deploy/nomad/rpcproxy.nomad.hcl parses as HCL2 and says what the README says it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

JOB_FILE = Path(__file__).resolve().parents[2] / "deploy" / "nomad" / "rpcproxy.nomad.hcl"


def load_job() -> dict[str, Any]:
    with JOB_FILE.open() as file:
        parsed: dict[str, Any] = hcl2.load(
            file,
            serialization_options=SerializationOptions(
                with_comments=False, explicit_blocks=False, strip_string_quotes=True
            ),
        )
    return parsed


def only(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The one block of a repeated-block list (python-hcl2 gives every block a list)."""
    (block,) = blocks
    return block


def labelled(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Labelled blocks (``port "query" {}``) by label."""
    return {label: body for block in blocks for label, body in block.items()}


def test_it_is_a_system_job_running_serve_on_docker() -> None:
    parsed = load_job()
    job = labelled(parsed["job"])["rpcproxy"]
    # One allocation per client node: every node's clients have a local proxy.
    assert job["type"] == "system"
    group = labelled(job["group"])["rpcproxy"]
    task = labelled(group["task"])["rpcproxy"]
    assert task["driver"] == "docker"
    config = only(task["config"])
    assert config["image"] == "${var.image}"
    assert labelled(parsed["variable"])["image"]["default"] == "rpcproxy:local"
    assert [config["command"], *config["args"]] == ["rpcproxy", "serve"]
    assert config["network_mode"] == "host"
    resources = only(task["resources"])
    assert resources["cpu"] > 0 and resources["memory"] > 0
    assert only(group["restart"])["attempts"] > 0


def test_it_follows_the_nodes_own_agent_through_the_task_api() -> None:
    job = labelled(load_job()["job"])["rpcproxy"]
    task = labelled(labelled(job["group"])["rpcproxy"]["task"])["rpcproxy"]
    env = only(task["env"])
    # Nomad 1.5+'s Task API: the agent on a socket in the task's secrets dir...
    assert env["RPCPROXY_NOMAD_ADDR"] == "unix://${NOMAD_SECRETS_DIR}/api.sock"
    # ...with the workload identity as NOMAD_TOKEN: no secret in the job.
    assert only(task["identity"]) == {"env": True}
    assert not {"NOMAD_TOKEN", "NOMAD_CACERT", "NOMAD_CLIENT_CERT", "NOMAD_CLIENT_KEY"} & set(env)
    assert env["RPCPROXY_QUERY"] == "tcp://127.0.0.1:${NOMAD_PORT_query}"
    assert env["RPCPROXY_HEARTBEAT_BIND"] == "tcp://127.0.0.1:${NOMAD_PORT_heartbeat}"
    assert env["RPCPROXY_EVENTS"] == "tcp://127.0.0.1:${NOMAD_PORT_events}"
    assert env["RPCPROXY_METRICS"] == "127.0.0.1:${NOMAD_PORT_metrics}"


def test_static_loopback_ports_and_a_health_check() -> None:
    job = labelled(load_job()["job"])["rpcproxy"]
    group = labelled(job["group"])["rpcproxy"]
    ports = labelled(only(group["network"])["port"])
    assert {name: port["static"] for name, port in ports.items()} == {
        "query": 4650,
        "heartbeat": 4651,
        "events": 4652,
        "metrics": 4653,
    }
    assert {port["host_network"] for port in ports.values()} == {"loopback"}
    service = only(group["service"])
    assert service["port"] == "query"
    check = only(service["check"])
    # Liveness over HTTP (section 11): a proxy whose cluster is down is alive.
    assert (check["type"], check["port"], check["path"]) == ("http", "metrics", "/healthz")
    assert check["interval"] and check["timeout"]
