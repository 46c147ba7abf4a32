"""The README's benchmark figures are bench/RESULTS.md's, and RESULTS.md is one run's.

bench/report.py builds the README's Performance block from RESULTS.md's
machine table and Summary; here the block in README.md must equal what it
builds, so a hand edit of either file (a figure, a verdict, the date) fails.
RESULTS.md itself must be what bench/run.py wrote: its Summary is its
sections' own verdicts, and its last line is a digest of the rest.
Only the generator is imported (standard library): no benchmark runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load_report() -> ModuleType:
    # bench/ is scripts, not a package; its modules import each other by bare
    # name, so the file is loaded by path under a name no other module uses.
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _load_report()
RESULTS_TEXT = (ROOT / "bench" / "RESULTS.md").read_text()
README_TEXT = (ROOT / "README.md").read_text()


def _written_by_run_py(results: Any) -> None:
    # bench/run.py records the commit it measured; a RESULTS.md without one
    # was pieced together (as the one before issue 16 was from three runs).
    assert "commit" in results.machine, "bench/RESULTS.md names no commit: run make bench"


def test_the_readme_block_is_built_from_results_md() -> None:
    expected = report.readme_block(report.parse_results(RESULTS_TEXT))
    assert report.readme_current_block(README_TEXT) == expected, (
        "README.md's Performance block differs from bench/RESULTS.md:"
        " run `python bench/report.py --readme` (never edit the block by hand)"
    )


def test_results_md_summary_is_its_sections_verdicts() -> None:
    results = report.parse_results(RESULTS_TEXT)
    _written_by_run_py(results)
    assert results.summary == results.sections


def test_results_md_is_unedited_since_run_py_wrote_it() -> None:
    results = report.parse_results(RESULTS_TEXT)
    _written_by_run_py(results)
    assert report.seal_state(RESULTS_TEXT) == "sealed", "bench/RESULTS.md was edited by hand"


# --------------------------------------------------------------------------
# The generator itself, on a small RESULTS.md made as bench/run.py makes one.

VERDICTS = [
    ("4. Heartbeat ingest (50,000 a round)", "applied/s 89653", ">= 10,000/s", True),
    ("4. Heartbeat ingest (50,000 a round)", "lost | applied", "0", True),
    ("Watch (a): watched find_server() (one process)", "ratio 0.5", ">= 100", False),
    ("Watch (c): async against threads", "aggregate ratio 1.42", "no target", None),
]


def _results_md() -> str:
    verdicts = [report.Verdict(report.short_name(t), f, g, m) for t, f, g, m in VERDICTS]
    lines = [
        "# rpcproxy benchmarks",
        "",
        "| machine | |",
        "| --- | --- |",
        "| date | 2026-12-02 09:00 UTC |",
        "| CPU | AMD EPYC |",
        "| cores | 2 |",
        "| commit | 0123abc (clean) |",
        "| load average before | 0.10 (1 min), 0.20 (5 min) |",
        "| load average after | 1.10 (1 min), 0.90 (5 min) |",
        "",
        *report.summary_markdown(verdicts),
        "",
    ]
    for title in dict.fromkeys(t for t, *_ in VERDICTS):
        lines += [f"## {title}", "", "| a |", "| --- |", "| 1 |", ""]
        lines += report.verdict_table((f, g, m) for t, f, g, m in VERDICTS if t == title)
        lines.append("")
    sealed: str = report.seal("\n".join(lines))
    return sealed


def test_a_written_results_md_parses_back_to_its_verdicts() -> None:
    results = report.parse_results(_results_md())
    assert [(v.benchmark, v.figure, v.target, v.met) for v in results.summary] == [
        ("4. Heartbeat ingest", "applied/s 89653", ">= 10,000/s", True),
        ("4. Heartbeat ingest", "lost | applied", "0", True),
        ("Watch (a): watched find_server()", "ratio 0.5", ">= 100", False),
        ("Watch (c): async against threads", "aggregate ratio 1.42", "no target", None),
    ]
    assert results.summary == results.sections
    assert results.machine["commit"] == "0123abc (clean)"
    assert report.seal_state(_results_md()) == "sealed"


def test_a_figure_without_a_target_is_shown_and_not_counted() -> None:
    text = _results_md()
    assert "| Watch (c): async against threads | aggregate ratio 1.42 | no target | - |" in text
    block = report.readme_block(report.parse_results(text))
    assert "2 of 3 targets met; 1 figure reported without a target." in block


def test_the_block_quotes_the_run_and_names_a_benchmark_once() -> None:
    block = report.readme_block(report.parse_results(_results_md()))
    assert "2026-12-02 09:00 UTC, commit 0123abc (clean), 2 cores (AMD EPYC)" in block
    assert "| 4. Heartbeat ingest | applied/s 89653 | >= 10,000/s | yes |" in block
    assert "|  | lost \\| applied | 0 | yes |" in block
    assert "| Watch (a): watched find_server() | ratio 0.5 | >= 100 | **no** |" in block


def test_a_hand_edit_of_either_file_is_caught() -> None:
    text = _results_md()
    block = report.readme_block(report.parse_results(text))
    readme = report.with_block(f"# x\n\n{report.BEGIN}\nold\n{report.END}\n\nrest\n", block)
    assert readme.endswith(f"{report.END}\n\nrest\n")
    assert report.readme_current_block(readme) == block
    # The README's figure changed by hand: no longer what RESULTS.md builds.
    edited_readme = readme.replace("ratio 0.5", "ratio 150")
    assert report.readme_current_block(edited_readme) != block
    # RESULTS.md's Summary changed by hand: the digest and the sections disagree.
    edited = text.replace("| ratio 0.5 | >= 100 | **no** |", "| ratio 150 | >= 100 | yes |", 1)
    assert report.seal_state(edited) == "broken"
    results = report.parse_results(edited)
    assert results.summary != results.sections
    # And a paragraph pasted in from another run, anywhere before the digest.
    pasted = text.replace("## Watch (c)", "Measured in another run: 2.0.\n\n## Watch (c)")
    assert report.seal_state(pasted) == "broken"
    assert report.seal_state(text.rsplit("<!--", 1)[0]) == "unsealed"


def test_short_names_drop_only_a_trailing_parenthesis() -> None:
    assert report.short_name("Watch (b): staleness after a change (three processes)") == (
        "Watch (b): staleness after a change"
    )
    assert report.short_name("Watch (c): async, 64 coroutines") == "Watch (c): async, 64 coroutines"
    assert report.short_name("Lookups with find_server()") == "Lookups with find_server()"
