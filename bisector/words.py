"""Wording shared by every renderer (console, HTML, the CLI's lines): counts with their nouns."""

from __future__ import annotations

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
