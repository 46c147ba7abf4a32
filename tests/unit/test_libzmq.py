"""The start-up check of the libzmq version (CVE-2020-15166 is fixed in 4.3.3).

That ``serve`` itself refuses an older libzmq, in a real process, is in
tests/integration/test_exit_paths.py.
"""

from __future__ import annotations

import pytest
import zmq

from rpcproxy.cli.service import libzmq_problem


@pytest.mark.parametrize("version", [(4, 3, 2), (4, 3, 0), (4, 2, 5), (4, 1, 9), (3, 9, 9)])
def test_versions_before_4_3_3_are_refused_naming_the_cve(version: tuple[int, int, int]) -> None:
    problem = libzmq_problem(version)
    assert problem is not None
    assert "CVE-2020-15166" in problem
    assert ".".join(map(str, version)) in problem
    assert "4.3.3" in problem


@pytest.mark.parametrize("version", [(4, 3, 3), (4, 3, 4), (4, 3, 5), (4, 4, 0), (5, 0, 0)])
def test_4_3_3_and_newer_are_fine(version: tuple[int, int, int]) -> None:
    assert libzmq_problem(version) is None


def test_the_running_libzmq_passes() -> None:
    version = zmq.zmq_version_info()
    assert libzmq_problem(version) is None, f"libzmq {zmq.zmq_version()} is too old"
