"""The README's promises that code can check: the config table and the CI command."""

from __future__ import annotations

import re
from pathlib import Path

from rpcproxy.cli.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_config_table_matches_the_code() -> None:
    match = re.search(r"<!-- config-table:start -->\n(.*?)<!-- config-table:end -->", README, re.S)
    assert match, "README lost its config-table markers"
    assert match.group(1).strip() == config_reference_markdown().strip()


def test_ci_runs_the_readme_test_command() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test\n" in ci


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_first_python_example_is_the_watching_client() -> None:
    first = python_blocks()[0]
    assert "ProxyClient(" in first and "watch=True" in first, first
    # ... and it hands its RPC to call(), rather than writing the failover loop.
    assert ".call(" in first, first


def test_the_testing_example_runs_as_written() -> None:
    # The one snippet that needs no proxy: it must run, asserts included.
    block = next(b for b in python_blocks() if "rpcproxy.testing" in b)
    exec(compile(block, "README.md", "exec"), {})
