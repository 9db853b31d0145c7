"""The work folders of `find` under ``.bisector/``: made, described, listed and pruned.

Each `find` without ``--workdir`` makes ``.bisector/run-YYYYmmdd-HHMMSS`` and writes ``run.json``
there (the script, its arguments, when; and once the report is made, the headline and the
cause). Traces, digests, replays and patches pile up, so after each new folder the oldest are
removed beyond a number kept (``KEEP``, or ``BISECTOR_KEEP_RUNS``; 0 keeps all). ``bisector runs``
lists them and prunes by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

BASE = Path(".bisector")
KEEP = 20  # runs kept under .bisector/ after a new one (BISECTOR_KEEP_RUNS overrides)
KEEP_ENV = "BISECTOR_KEEP_RUNS"
DESCRIPTION = "run.json"


@dataclass
class Run:
    """A work folder: where, when (its start, seconds since the epoch), how big, and what the
    run.json says (``script``, ``args``, ``headline``, ``cause``; {} for older folders)."""

    path: Path
    started: float
    size: int
    about: dict


def new_workdir(script: str | os.PathLike, args: tuple[str, ...], base: Path = BASE) -> Path:
    """A new folder for a run of ``script``, described in its run.json; then the oldest runs
    beyond the number kept are removed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        folder = base / (f"run-{stamp}" if i == 0 else f"run-{stamp}-{i}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        about = {"script": str(script), "args": list(args), "started": time.time()}
        (folder / DESCRIPTION).write_text(json.dumps(about, indent=1))
        prune(base, keep_default(), protect=folder)
        return folder
    raise OSError(f"cannot create a work folder under {base}/")


def note_result(folder: Path, headline: str, cause: str | None) -> None:
    """Add the report's headline and cause to a folder's run.json (if it has one)."""
    path = folder / DESCRIPTION
    try:
        about = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    about.update(headline=headline, cause=cause)
    path.write_text(json.dumps(about, indent=1))


def keep_default() -> int:
    """Runs kept after a new one: BISECTOR_KEEP_RUNS when set to a number, else KEEP."""
    value = os.environ.get(KEEP_ENV, "")
    return int(value) if value.strip().isdigit() else KEEP


def runs(base: Path = BASE) -> list[Run]:
    """The run folders under ``base``, newest first."""
    if not base.is_dir():
        return []
    found = []
    for folder in base.iterdir():
        if not folder.is_dir() or not folder.name.startswith("run-"):
            continue
        try:
            about = json.loads((folder / DESCRIPTION).read_text())
        except (OSError, ValueError):
            about = {}
        started = float(about.get("started") or folder.stat().st_mtime)
        found.append(Run(folder, started, _size(folder), about))
    return sorted(found, key=lambda run: (run.started, run.path.name), reverse=True)


def prune(
    base: Path = BASE,
    keep: int | None = None,
    older_than_days: float | None = None,
    protect: Path | None = None,
    dry_run: bool = False,
) -> list[Run]:
    """Remove run folders beyond the newest ``keep`` (0 or None: no limit by count) and those
    older than ``older_than_days``; never ``protect``. Returns those removed (or that would
    be, with ``dry_run``)."""
    now = time.time()
    removed = []
    for index, run in enumerate(runs(base)):
        if protect is not None and run.path.resolve() == protect.resolve():
            continue
        too_many = keep is not None and keep > 0 and index >= keep
        too_old = older_than_days is not None and now - run.started > older_than_days * 86400
        if too_many or too_old:
            if not dry_run:
                shutil.rmtree(run.path, ignore_errors=True)
            removed.append(run)
    return removed


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we count
                total += os.path.getsize(os.path.join(root, name))
    return total


def human_size(size: int) -> str:
    """ "16.2 MB"."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
