"""The project explains itself: docs/architecture.md exists, what the code cites of it
(sections, numbered invariants) is there, and the tests it names exist."""

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SOURCES = ("src", "ingress", "workers", "fallback", "tests", "bench")

# "invariant 3", "Invariants 2 and 3", "invariants 1, 2 and 5"
INVARIANT_CITATION = re.compile(r"\binvariants?\s+(\d+(?:\s*(?:,|and)\s*\d+)*)", re.IGNORECASE)
SECTION_CITATION = re.compile(r"docs/architecture\.md#([\w-]+)")
NAMED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _cited_in() -> Iterator[tuple[Path, str]]:
    """Every Python file of the project, and the README, with its text."""
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, path.read_text(encoding="utf-8")
    yield ROOT / "README.md", (ROOT / "README.md").read_text(encoding="utf-8")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _document() -> str:
    return ARCHITECTURE.read_text(encoding="utf-8")


def _anchors() -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", _document(), re.MULTILINE)}


def _invariants() -> set[int]:
    return {int(n) for n in re.findall(r"^### (\d+)\. ", _document(), re.MULTILINE)}


def test_the_six_invariants_are_numbered_in_order() -> None:
    numbers = [int(n) for n in re.findall(r"^### (\d+)\. ", _document(), re.MULTILINE)]
    assert numbers == [1, 2, 3, 4, 5, 6]


def test_every_cited_invariant_is_in_the_document() -> None:
    invariants = _invariants()
    wrong = [
        f"{path.relative_to(ROOT)}: invariant {number}"
        for path, text in _cited_in()
        if path != Path(__file__).resolve()
        for cited in INVARIANT_CITATION.findall(text)
        for number in map(int, re.findall(r"\d+", cited))
        if number not in invariants
    ]
    assert not wrong


def test_every_cited_section_is_in_the_document() -> None:
    anchors = _anchors()
    wrong = [
        f"{path.relative_to(ROOT)}: #{anchor}"
        for path, text in _cited_in()
        for anchor in SECTION_CITATION.findall(text)
        if anchor not in anchors
    ]
    assert not wrong


def test_every_test_the_document_names_exists() -> None:
    named = NAMED_TEST.findall(_document())
    assert len(named) > 50, "the invariants name the tests that hold them"
    missing = []
    for file, test in named:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif not re.search(rf"^(async )?def {test}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{file}::{test}")
    assert not missing


def test_the_documents_own_links_lead_somewhere() -> None:
    anchors = _anchors()
    readme = ROOT / "README.md"
    readme_anchors = {
        _anchor(h) for h in re.findall(r"^#+ (.+)$", readme.read_text(), re.MULTILINE)
    }
    wrong = [
        link
        for link in re.findall(r"\]\(([^)]+)\)", _document())
        if not (
            (link.startswith("#") and link[1:] in anchors)
            or (link.startswith("../README.md#") and link.split("#", 1)[1] in readme_anchors)
            or link == "../README.md"
        )
    ]
    assert not wrong


def test_nothing_cites_documents_outside_the_project() -> None:
    outside = [
        str(path.relative_to(ROOT))
        for path, text in _cited_in()
        if path != Path(__file__).resolve() and ("DESIGN.md" in text or "../shared" in text)
    ]
    assert not outside


def test_the_readme_links_the_architecture() -> None:
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()
