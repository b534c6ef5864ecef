"""Reading Dockerfiles and .dockerignore as Docker does, for the deploy tests.

:func:`stages` splits a Dockerfile (parsed by ``dockerfile-parse``) into its build stages;
:class:`DockerIgnore` answers whether a path of the build context is left out, with
Docker's rules: patterns are relative to the context root, ``*`` and ``?`` stay within one
path element, ``**`` spans any number of them, a pattern that matches a directory leaves
out everything below it, ``!`` lets a path back in, and the last pattern that matches wins.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser

__all__ = ["DockerIgnore", "Stage", "exec_form", "stages"]


@dataclass
class Stage:
    """One ``FROM`` and what follows it."""

    base: str
    name: str
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.all(instruction)
        return found[-1] if found else None


def stages(path: Path) -> list[Stage]:
    """The stages of the Dockerfile at ``path``; ``ARG`` defaults before the first ``FROM``
    are substituted into the bases (``FROM ${PYTHON_IMAGE}``)."""
    parser = DockerfileParser(path=str(path))
    args: dict[str, str] = {}
    found: list[Stage] = []
    for item in parser.structure:
        if item["instruction"] == "ARG" and not found:
            name, _, default = item["value"].partition("=")
            args[name.strip()] = default.strip()
        elif item["instruction"] == "FROM":
            words = [w for w in item["value"].split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)),
                          words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else ""
            found.append(Stage(base, name))
        elif found:
            found[-1].instructions.append(dict(item))
    return found


def exec_form(value: str) -> list[str] | None:
    """The JSON (exec) form of ENTRYPOINT / CMD, or None for the shell form."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) else None


def copy_sources(value: str) -> tuple[list[str], dict[str, str]]:
    """The sources of a ``COPY`` (all words but the last) and its ``--flags``."""
    words = exec_form(value) or shlex.split(value)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    rest = [w for w in words if not w.startswith("--")]
    return rest[:-1], flags


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """The rules of one ``.dockerignore``."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line[1:].strip() if keep else line
            pattern = pattern.strip("/").removeprefix("./")
            self.rules.append((keep, _regex(pattern), pattern))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, '/'-separated) stays out."""
        parts = path.strip("/").removeprefix("./").split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        out = False
        for keep, regex, _ in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                out = not keep
        return out
