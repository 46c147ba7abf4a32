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
