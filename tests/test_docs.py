"""The repository stands on its own: every design-note section it cites exists, every local file a document links
to exists, and the shipped copies of pipeline_shadow.py equal the root file (`make sync-copies` refreshes them)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN_NOTES = ROOT / "docs" / "design.md"
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}
# "docs/design.md §2, §4 and §8" cites three sections.
CITATION = re.compile(r"design\.md((?:[\s,;/&(]*(?:and\s+)?§\s*\d+)+)")
SECTION_HEADING = re.compile(r"^##\s+(\d+)\.", re.MULTILINE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / name for name in listed.splitlines()]
    here = Path(__file__).resolve()  # its own examples cite sections on purpose
    return [
        path
        for path in files
        if path.is_file() and path != here and (path.suffix in TEXT_SUFFIXES or path.name == "Makefile")
    ]


def cited_sections(text: str) -> set[int]:
    return {int(number) for match in CITATION.finditer(text) for number in re.findall(r"§\s*(\d+)", match.group(1))}


def test_citation_parser_reads_lists_of_sections():
    assert cited_sections("see docs/design.md §2, §4 and §8; also design.md §10") == {2, 4, 8, 10}
    assert cited_sections("paper §3.2 is the paper's, not ours") == set()


def test_every_cited_design_section_exists():
    existing = {int(number) for number in SECTION_HEADING.findall(DESIGN_NOTES.read_text())}
    missing = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for section in sorted(cited_sections(text) - existing):
            missing.append(f"{path.relative_to(ROOT)} cites docs/design.md §{section}")
    assert not missing, "cited sections that docs/design.md does not have:\n" + "\n".join(missing)


def test_no_reference_to_a_design_file_outside_the_repo():
    outside = "DESIGN" + ".md"  # the briefing the project started from; a clone does not have it
    offenders = [str(p.relative_to(ROOT)) for p in tracked_text_files() if outside in p.read_text(errors="replace")]
    assert not offenders, f"{outside} is not in the repository; cite docs/design.md instead: {offenders}"


@pytest.mark.parametrize("document", ["README.md", "BENCHMARKS.md", "docs/design.md", "models/shadow-small/README.md"])
def test_local_links_resolve(document):
    path = ROOT / document
    broken = []
    for target in MARKDOWN_LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            continue
        local = (path.parent / target.split("#", 1)[0]).resolve()
        if not local.exists():
            broken.append(target)
    assert not broken, f"{document} links to files that do not exist: {broken}"


def test_shipped_pipeline_copies_equal_the_root_file():
    reference = (ROOT / "pipeline_shadow.py").read_bytes()
    copies = [p for p in tracked_text_files() if p.name == "pipeline_shadow.py" and p.parent != ROOT]
    assert copies, "models/shadow-small ships copies of pipeline_shadow.py for trust_remote_code"
    stale = [str(p.relative_to(ROOT)) for p in copies if p.read_bytes() != reference]
    assert not stale, f"these copies differ from pipeline_shadow.py; run `make sync-copies`: {stale}"
