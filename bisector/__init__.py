"""bisector: find why two runs of the same PyTorch training stop being bitwise identical.

Public API:
    find(script, args=(), steps=2) -> Report    run a script twice and compare
    record(path, steps=None)                    context manager: record ops inside a script
    watch(model, optimizer, path, every=1)      step digests from inside a training script
    diff(a, b)                                  compare two traces, digest files or checkpoints

The names are imported on first use (PEP 562), so that `import bisector` and the command line's
`--help` and `--version` do not wait for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["BisectorError", "Report", "Source", "__version__", "diff", "find", "record", "watch"]

# name -> the module that defines it
_LAZY = {
    "diff": "bisector.api",
    "find": "bisector.api",
    "record": "bisector.api",
    "watch": "bisector.api",
    "BisectorError": "bisector.errors",
    "Report": "bisector.report",
    "Source": "bisector.report",
}

if TYPE_CHECKING:
    from bisector.api import diff, find, record, watch
    from bisector.errors import BisectorError
    from bisector.report import Report, Source


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bisector' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
