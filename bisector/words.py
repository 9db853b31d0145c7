"""Wording shared by every renderer (console, HTML, the CLI's lines, the verdict's advice):
counts with their nouns, and the source text of a "file.py:LINE"."""

from __future__ import annotations

import linecache
import os

# Nouns whose plural is not the noun + "s".
_IRREGULAR = {"process": "processes", "was": "were", "differs": "differ"}


def plural(count: int, noun: str) -> str:
    """The noun as ``count`` of it reads: "step" for 1, "steps" otherwise."""
    if count == 1:
        return noun
    return _IRREGULAR.get(noun, noun + "s")


def counted(count: int, noun: str) -> str:
    """ "1 step", "2 steps", "0 sources"."""
    return f"{count} {plural(count, noun)}"


def source_line(location: str, limit: int | None = None) -> str:
    """The source text at "file.py:LINE" (a relative path: from the working folder), stripped
    and, given ``limit``, shortened to that many characters; "" if it cannot be read."""
    path, _, line = location.rpartition(":")
    if not path or not line.isdigit():
        return ""
    text = linecache.getline(os.path.abspath(path), int(line)).strip()
    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."
    return text
