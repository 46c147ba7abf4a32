"""bench/RESULTS.md's Summary, and the README's Performance block made from it.

``bench/run.py --write bench/RESULTS.md`` writes the file whole and then the
README block; ``python bench/report.py --readme`` rebuilds the block from
RESULTS.md alone, and ``--check`` says whether the two agree (as
tests/unit/test_bench_results.py does). Everything the block says is taken
from RESULTS.md's machine table and Summary, which the benchmarks' own
verdicts filled in, so a figure cannot reach the README by hand.

Standard library only: the test imports this module without zmq, the product
or a benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
README = BENCH_DIR.parent / "README.md"

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
NO_TARGET = "no target"
"""The target cell of a figure reported without one (``Result.report``)."""

SUMMARY_HEADING = "## Summary"
SUMMARY_HEADER = "| benchmark | figure | target | met |"
VERDICT_HEADER = "| figure | target | met |"
_SEAL = re.compile(
    r"<!-- written whole by bench/run\.py; sha256 of the text above: ([0-9a-f]{64}) -->"
)


@dataclass(frozen=True)
class Verdict:
    """One row of the Summary: a figure and its target; ``met`` None when it has none."""

    benchmark: str
    figure: str
    target: str
    met: bool | None


def short_name(title: str) -> str:
    """A section title without its trailing parenthesis: "4. Heartbeat ingest (50,000 ...)".

    Only the trailing one: "Watch (a): ... (one process)" keeps its "(a)".
    """
    return re.sub(r" \([^()]*\)$", "", title)


def met_cell(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "**no**"


def _parse_met(cell: str) -> bool | None:
    cells: dict[str, bool | None] = {"yes": True, "**no**": False, "-": None}
    if cell not in cells:
        raise ValueError(f"unknown 'met' cell {cell!r}")
    return cells[cell]


def row(cells: Iterable[str]) -> str:
    # A "|" inside a figure would end its cell; escaped, the parser keeps it.
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _cells(line: str) -> list[str]:
    inner = line.strip()
    if not (inner.startswith("|") and inner.endswith("|")):
        raise ValueError(f"not a table row: {line!r}")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner[1:-1])]


def _table_after(lines: list[str], header: str) -> list[list[str]]:
    """The rows of the table whose header is ``lines[0] == header`` (after its --- line)."""
    assert lines[0] == header, lines[0]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return rows


def count_line(verdicts: list[Verdict]) -> str:
    targets = [v for v in verdicts if v.met is not None]
    met = sum(1 for v in targets if v.met)
    reported = len(verdicts) - len(targets)
    line = f"{met} of {len(targets)} targets met"
    if reported:
        line += f"; {reported} figure{'s' if reported > 1 else ''} reported without a target"
    return line + "."


def summary_markdown(verdicts: list[Verdict]) -> list[str]:
    """The Summary section of RESULTS.md (its lines)."""
    return [
        SUMMARY_HEADING,
        "",
        count_line(verdicts),
        "",
        SUMMARY_HEADER,
        "| --- | --- | --- | --- |",
        *(row([v.benchmark, v.figure, v.target, met_cell(v.met)]) for v in verdicts),
    ]


def verdict_table(verdicts: Iterable[tuple[str, str, bool | None]]) -> list[str]:
    """A section's own figure / target / met table."""
    return [
        VERDICT_HEADER,
        "| --- | --- | --- |",
        *(row([figure, target, met_cell(met)]) for figure, target, met in verdicts),
    ]


# --------------------------------------------------------------------------
# The whole file: written at once, sealed with a digest of its text.


def seal(text: str) -> str:
    """``text`` with a last line holding its SHA-256, so any later edit shows."""
    if not text.endswith("\n"):
        text += "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{text}<!-- written whole by bench/run.py; sha256 of the text above: {digest} -->\n"


def seal_state(text: str) -> str:
    """ "sealed", "unsealed" (no digest line) or "broken" (edited after it was written)."""
    body, _, last = text.rstrip("\n").rpartition("\n")
    match = _SEAL.fullmatch(last)
    if match is None:
        return "unsealed"
    ok = hashlib.sha256((body + "\n").encode()).hexdigest() == match.group(1)
    return "sealed" if ok else "broken"


@dataclass(frozen=True)
class Results:
    """What RESULTS.md says: its machine table, Summary and each section's verdicts."""

    machine: dict[str, str]
    summary: list[Verdict]
    sections: list[Verdict]
    """Every section's own verdict rows, named as the Summary names them."""


def parse_results(text: str) -> Results:
    lines = text.splitlines()
    machine_start = lines.index("| machine | |")
    machine = {key: value for key, value in _table_after(lines[machine_start:], "| machine | |")}
    start = lines.index(SUMMARY_HEADING)
    header = lines.index(SUMMARY_HEADER, start)
    summary = [
        Verdict(name, figure, target, _parse_met(met))
        for name, figure, target, met in _table_after(lines[header:], SUMMARY_HEADER)
    ]
    sections: list[Verdict] = []
    title = ""
    for index, line in enumerate(lines):
        if line.startswith("## ") and line != SUMMARY_HEADING:
            title = line[3:]
        elif line == VERDICT_HEADER and title:
            sections += [
                Verdict(short_name(title), figure, target, _parse_met(met))
                for figure, target, met in _table_after(lines[index:], VERDICT_HEADER)
            ]
    return Results(machine, summary, sections)


# --------------------------------------------------------------------------
# The README block.


def _run_sentence(machine: dict[str, str]) -> str:
    # Every value is quoted from the machine table; a RESULTS.md written
    # before the commit was recorded says so rather than guessing one.
    commit = machine.get("commit", "not recorded")
    return (
        f"Last run, as `bench/RESULTS.md` records it: {machine.get('date', 'date not recorded')},"
        f" commit {commit}, {machine.get('cores', '?')} cores ({machine.get('CPU', '?')}),"
        f" load average {machine.get('load average before', '?')} before and"
        f" {machine.get('load average after', '?')} after."
    )


def readme_block(results: Results) -> str:
    """The README's text between the markers (markers excluded)."""
    lines = [
        "<!-- Generated from bench/RESULTS.md by bench/report.py (`make bench`, or"
        " `python bench/report.py --readme`); tests/unit/test_bench_results.py fails"
        " on a hand edit. -->",
        _run_sentence(results.machine),
        count_line(results.summary),
        "",
        SUMMARY_HEADER,
        "| --- | --- | --- | --- |",
    ]
    previous = None
    for v in results.summary:
        # A benchmark with several figures is named once, on its first row.
        name = "" if v.benchmark == previous else v.benchmark
        previous = v.benchmark
        lines.append(row([name, v.figure, v.target, met_cell(v.met)]))
    return "\n".join(lines) + "\n"


def readme_current_block(readme: str) -> str:
    """The README's text between the markers; ValueError when they are missing."""
    begin, end = readme.find(BEGIN + "\n"), readme.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return readme[begin + len(BEGIN) + 1 : end]


def with_block(readme: str, block: str) -> str:
    current = readme_current_block(readme)
    begin = readme.index(BEGIN + "\n") + len(BEGIN) + 1
    return readme[:begin] + block + readme[begin + len(current) :]


def write_readme(results_text: str, readme_path: Path = README) -> None:
    block = readme_block(parse_results(results_text))
    readme_path.write_text(with_block(readme_path.read_text(), block))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--readme", action="store_true", help="rewrite README.md's block")
    mode.add_argument("--check", action="store_true", help="exit 1 when they disagree")
    args = parser.parse_args(argv)
    text = RESULTS.read_text()
    if args.readme:
        write_readme(text)
        print(f"rewrote the {BEGIN} block of {README} from {RESULTS}")
        return 0
    if seal_state(text) == "broken":
        print(f"{RESULTS} was edited after bench/run.py wrote it; run make bench")
        return 1
    block = readme_block(parse_results(text))
    if readme_current_block(README.read_text()) != block:
        print(f"{README}'s bench block differs from {RESULTS}; run bench/report.py --readme")
        return 1
    print(f"{README}'s bench block matches {RESULTS} ({seal_state(text)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
