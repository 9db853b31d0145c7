"""Renderers: each turns a finished report into text, and none computes anything.

A report is a ``Report`` (two recorded runs), a ``DigestReport`` (step digests) or a
``CheckpointReport`` (two checkpoints). Two entry points cover every renderer:

    to_console(report, console)   the terminal (console.py, digests.py, checkpoint.py)
    to_file(report, "html")       the text of a report file: "json" or "html" (html.py)

The words they share (kinds of source, outcomes, effects, the replay's verdict, the fix) are
in wording.py; ``bisector doctor`` has its own page (doctor.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

FILE_FORMATS = ("json", "html")


def to_console(report: Any, console: Console) -> None:
    """Print the report on the console, as the report's kind is laid out."""
    from bisector.digests import DigestReport
    from bisector.render import console as console_page
    from bisector.render import digests

    if is_checkpoint_report(report):
        from bisector.render import checkpoint

        checkpoint.render(report, console)
    elif isinstance(report, DigestReport):
        digests.render(report, console)
    else:
        console_page.render(report, console)


def is_checkpoint_report(report: Any) -> bool:
    """Whether ``report`` is a ``CheckpointReport``, without importing bisector.checkpoint
    (which imports torch: 1.5 s for a ``diff`` of two traces) where no checkpoint was read."""
    module = sys.modules.get("bisector.checkpoint")
    return module is not None and isinstance(report, module.CheckpointReport)


def to_file(report: Any, kind: str) -> str:
    """The report as the text of a file of this kind (one of ``FILE_FORMATS``)."""
    if kind == "json":
        return report.to_json()
    if kind == "html":
        from bisector.render.html import render_html

        return render_html(report)
    raise ValueError(f"no renderer for {kind!r}: one of {', '.join(FILE_FORMATS)}")
