"""Every pointer into the docs resolves inside the repository: a named file exists, a named section is a
heading of it, a markdown link's anchor is one of its headings. Comments once cited a document that was not
in the repository; this keeps "see …" honest."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("dfu", "gateway_agent", "profiles", "simulator", "hil", "fota_service", "benchmarks", "tests")
FILE_REF = re.compile(r"docs/([a-z0-9_-]+\.md)")
SECTION_REF = re.compile(r"docs/([a-z0-9_-]+\.md),?\s+\"([^\"]+)\"")
LINK = re.compile(r"\]\((?:docs/)?([a-z0-9_-]+\.md)(?:#([a-z0-9-]+))?\)")


def _files() -> list[Path]:
    found = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "systemd").glob("*"))]
    for top in SOURCES:
        found += sorted(p for p in (REPO / top).rglob("*") if p.suffix in {".py", ".toml", ".md"})
    return [p for p in found if "__pycache__" not in p.parts]


def _headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")]


def _anchor(heading: str) -> str:
    """GitHub's rule: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_docs_reference_resolves() -> None:
    broken: list[str] = []
    for path in _files():
        text = path.read_text(errors="replace")
        where = path.relative_to(REPO)
        for name in FILE_REF.findall(text):
            if not (REPO / "docs" / name).is_file():
                broken.append(f"{where}: docs/{name} does not exist")
        for name, section in SECTION_REF.findall(text):
            doc = REPO / "docs" / name
            if doc.is_file() and not any(section.lower() in h.lower() for h in _headings(doc)):
                broken.append(f'{where}: docs/{name} has no section "{section}"')
        if path.suffix == ".md":
            base = path.parent
            for name, anchor in LINK.findall(text):
                doc = base / name if (base / name).is_file() else REPO / "docs" / name
                if not doc.is_file():
                    broken.append(f"{where}: link to {name} which does not exist")
                elif anchor and anchor not in {_anchor(h) for h in _headings(doc)}:
                    broken.append(f"{where}: {name} has no heading for #{anchor}")
    assert not broken, "\n".join(broken)
