"""A docs block that says it is a file of the repository is that file, whole.

Its info string names the file (```` ```python file=plugins/echo/src/revo_engine_echo/... ````,
the whole path); the block must equal the file, so a change to the file that the page does
not follow fails here instead of teaching readers yesterday's code.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
OPENING = re.compile(r"^(?P<fence>`{3,})\S*(?P<info>.*)$")


def file_blocks() -> list[tuple[str, str, str]]:
    """(where, path, text) of every block whose info string has ``file=PATH``."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        index = 0
        while index < len(lines):
            opening = OPENING.match(lines[index])
            index += 1
            if opening is None:
                continue
            start = index
            while index < len(lines) and not lines[index].startswith(opening["fence"]):
                index += 1
            named = re.search(r"\bfile=(\S+)", opening["info"])
            if named:
                found.append((f"{page.relative_to(ROOT)}:{start}", named.group(1),
                              "\n".join(lines[start:index]) + "\n"))
            index += 1
    return found


def test_a_block_that_names_a_file_is_that_file() -> None:
    blocks = file_blocks()
    assert blocks, "no docs block names its file (file=PATH): the check would check nothing"
    for where, path, text in blocks:
        file = ROOT / path
        assert file.is_file(), f"{where}: names {path}, which does not exist"
        assert text == file.read_text(), (
            f"{where}: the block is no longer {path}; copy the file into the page")
