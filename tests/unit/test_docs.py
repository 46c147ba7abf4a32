"""Every citation of the protocol, and every README link, points at something that exists.

The code cites ``docs/protocol.md section N`` (or ``sections N and M``); the
document's headings are ``## N. Title`` and ``### N.M Title``, numbered as
the binding contract is. A citation of a section the document lacks, or of
a file the repository does not have, is a dead link for the next reader. The
README is held to the same: its links lead to files and headings that exist,
and it names the protocol by its path.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "protocol.md"
README = REPO / "README.md"
CODE_FOLDERS = ("proxy", "actors", "bus", "cli", "sim")

_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.M)
_CITATION = re.compile(
    r"docs/protocol\.md,? sections? (\d+(?:\.\d+)?)((?:(?:, | and )\d+(?:\.\d+)?)*)"
)
_STALE_NAME = re.compile(r"(?<![/\w])PROTOCOL\.md")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_MD_HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)
_BENCH_BLOCK = re.compile(r"<!-- bench:begin -->.*?<!-- bench:end -->", re.S)


def _sources() -> list[Path]:
    files = [REPO / "__init__.py"]
    for folder in CODE_FOLDERS:
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def _sections() -> set[str]:
    return set(_HEADING.findall(DOC.read_text()))


def _cited_sections(text: str) -> list[str]:
    numbers: list[str] = []
    for match in _CITATION.finditer(text):
        numbers += [match[1], *re.findall(r"\d+(?:\.\d+)?", match[2])]
    return numbers


def _readme_outside_code() -> str:
    """README.md without its fenced code blocks (a shell comment is no heading)."""
    return _FENCE.sub("", README.read_text())


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _readme_anchors() -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _MD_HEADING.findall(_readme_outside_code()):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_the_document_has_the_contracts_sections() -> None:
    assert {str(n) for n in range(1, 10)} | {"4.1"} <= _sections()


def test_every_citation_names_a_section_of_the_document() -> None:
    sections = _sections()
    cited: list[tuple[str, str]] = []
    for path in _sources():
        cited += [(f"{path.relative_to(REPO)}", n) for n in _cited_sections(path.read_text())]
    assert len(cited) > 20, "the code is expected to cite the protocol by section"
    dead = [(where, n) for where, n in cited if n not in sections]
    assert not dead, f"citations of sections docs/protocol.md does not have: {dead}"


def test_no_code_cites_a_protocol_file_the_repository_lacks() -> None:
    stale = [
        str(path.relative_to(REPO)) for path in _sources() if _STALE_NAME.search(path.read_text())
    ]
    assert not stale, f"cite docs/protocol.md instead: {stale}"


# -- README.md ----------------------------------------------------------------


def test_every_relative_link_in_the_readme_exists() -> None:
    text = _readme_outside_code()
    targets = _LINK.findall(text) + _REFERENCE.findall(text)
    assert "docs/protocol.md" in targets, "the README is expected to link the protocol"
    anchors = _readme_anchors()
    dead: list[str] = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file
            continue
        path, _, anchor = target.partition("#")
        found = (README.parent / path).exists() if path else anchor in anchors
        if not found:
            dead.append(target)
    assert not dead, f"README.md links to files or headings that do not exist: {dead}"


def test_the_readme_names_the_protocol_by_its_path() -> None:
    """``docs/protocol.md``, never a ``PROTOCOL.md`` the repository does not have.

    The Performance block is left out: bench/report.py writes it from
    bench/RESULTS.md (test_bench_results holds the two equal), and the
    benchmarks that fill RESULTS.md name docs/protocol.md themselves.
    """
    prose = _BENCH_BLOCK.sub("", README.read_text())
    stale = [line.strip() for line in prose.splitlines() if _STALE_NAME.search(line)]
    assert not stale, f"README.md: cite docs/protocol.md instead: {stale}"


def test_every_readme_citation_names_a_section_of_the_document() -> None:
    cited = _cited_sections(README.read_text())
    assert cited, "the README is expected to cite the protocol by section"
    dead = sorted(set(cited) - _sections())
    assert not dead, f"README.md cites sections docs/protocol.md does not have: {dead}"
