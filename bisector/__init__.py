"""bisector: find why two runs of the same PyTorch training stop being bitwise identical.

Public API:
    find(script, args=(), steps=2) -> Report    run a script twice and compare
    record(path, steps=None)                    context manager: record ops inside a script
    watch(model, optimizer, path, every=1)      step digests from inside a training script
    diff(a, b)                                  compare two traces, digest files or checkpoints
"""

from __future__ import annotations

__version__ = "0.1.0"

from bisector.api import diff, find, record, watch  # noqa: E402
from bisector.errors import BisectorError  # noqa: E402
from bisector.report import Report, Source  # noqa: E402

__all__ = ["BisectorError", "Report", "Source", "__version__", "diff", "find", "record", "watch"]
