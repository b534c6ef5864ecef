"""Every relative link in README.md and docs/*.md reaches a file that exists, and every
``#anchor`` a heading (or an ``<a id>``) of the page it names, as the forge renders them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*)$")
HTML_ID = re.compile(r"<a id=\"([^\"]+)\"")


def _prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, numbered."""
    out, fence = [], ""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith(("```", "~~~")):
            mark = line[:3]
            fence = "" if fence == mark else (fence or mark)
            continue
        if not fence:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose(page):
        found.update(HTML_ID.findall(line))
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_the_slug_is_the_forges() -> None:
    assert slug("### `revo_task_types` (declared by Parallel Mind)".lstrip("# ")) == \
        "revo_task_types-declared-by-parallel-mind"
    assert slug("The cluster under faults (`cluster`)") == "the-cluster-under-faults-cluster"


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in PAGES:
        for number, line in _prose(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                    continue
                path, _, fragment = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(ROOT)}:{number}: {target}"
                if not file.exists():
                    broken.append(f"{where} (no such file)")
                elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                    broken.append(f"{where} (no such heading in {file.name})")
    assert not broken, "broken links in the docs:\n" + "\n".join(broken)
