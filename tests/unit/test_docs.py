"""Every docstring's citation of the protocol points at a section that exists.

The code cites ``docs/protocol.md section N`` (or ``sections N and M``); the
document's headings are ``## N. Title`` and ``### N.M Title``, numbered as
the binding contract is. A citation of a section the document lacks, or of
a file the repository does not have, is a dead link for the next reader.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "protocol.md"
CODE_FOLDERS = ("proxy", "actors", "bus", "cli", "sim")

_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.M)
_CITATION = re.compile(
    r"docs/protocol\.md,? sections? (\d+(?:\.\d+)?)((?:(?:, | and )\d+(?:\.\d+)?)*)"
)


def _sources() -> list[Path]:
    files = [REPO / "__init__.py"]
    for folder in CODE_FOLDERS:
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def _sections() -> set[str]:
    return set(_HEADING.findall(DOC.read_text()))


def test_the_document_has_the_contracts_sections() -> None:
    assert {str(n) for n in range(1, 10)} | {"4.1"} <= _sections()


def test_every_citation_names_a_section_of_the_document() -> None:
    sections = _sections()
    cited: list[tuple[str, str]] = []
    for path in _sources():
        for match in _CITATION.finditer(path.read_text()):
            numbers = [match[1], *re.findall(r"\d+(?:\.\d+)?", match[2])]
            cited += [(f"{path.relative_to(REPO)}", n) for n in numbers]
    assert len(cited) > 20, "the code is expected to cite the protocol by section"
    dead = [(where, n) for where, n in cited if n not in sections]
    assert not dead, f"citations of sections docs/protocol.md does not have: {dead}"


def test_no_code_cites_a_protocol_file_the_repository_lacks() -> None:
    stale = [
        str(path.relative_to(REPO))
        for path in _sources()
        if re.search(r"(?<![/\w])PROTOCOL\.md", path.read_text())
    ]
    assert not stale, f"cite docs/protocol.md instead: {stale}"
