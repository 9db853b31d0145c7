"""Processes the recorded script starts, and the torch work that runs in them unrecorded.

A Recorder records the process it runs in. A script may also train elsewhere: hogwild workers
(``torch.multiprocessing`` with fork), ``mp.spawn``, a DataLoader's workers. A forked child
inherits our dispatch mode and hooks, so it reaches our handlers with another pid: there we
only note, once per kind, what it does (ops, backward, optimizer steps, modules with
parameters) in a file beside the trace, one JSON line per note (appends of a short line from
several processes do not interleave). Every ``multiprocessing`` start is noted too, so that a
process started with ``spawn`` (which inherits nothing of ours) is still named. The parent
reads the notes when it finishes the trace: the report names what was not recorded, and
refuses to call runs reproducible when training ran there.
"""

from __future__ import annotations

import json
import multiprocessing.process
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

_DATALOADER_LOOP = "torch.utils.data._utils.worker._worker_loop"


class Processes:
    """Notes the processes a script starts and what torch work runs in them.

    Args:
        path: the notes file (JSON lines), e.g. ``run.trace.processes``.
        pid: the recorded process.
    """

    def __init__(self, path: str | os.PathLike, pid: int):
        self.path = Path(path)
        self.pid = pid
        self._noted: set[tuple[int, str]] = set()
        self._original_start: Callable[..., Any] | None = None

    def install(self) -> None:
        """Note every ``multiprocessing`` process started from now on (removed by ``remove``)."""
        if self._original_start is not None:
            return
        original = multiprocessing.process.BaseProcess.start
        notes = self

        def start(process, *args, **kwargs):
            target = _target_name(process)  # start() forgets the target once started
            result = original(process, *args, **kwargs)
            if os.getpid() == notes.pid:
                notes._write(
                    {"pid": process.pid, "started": _start_method(process), "target": target}
                )
            return result

        multiprocessing.process.BaseProcess.start = start  # type: ignore[method-assign,assignment]
        self._original_start = original

    def remove(self) -> None:
        if self._original_start is not None:
            restored = self._original_start
            multiprocessing.process.BaseProcess.start = restored  # type: ignore[method-assign]
            self._original_start = None

    def note(self, what: str) -> None:
        """In a process other than the recorded one: note once that it did ``what``."""
        pid = os.getpid()
        if (pid, what) in self._noted:
            return
        self._noted.add((pid, what))
        self._write({"pid": pid, "did": what, "dataloader_worker": _in_dataloader_worker()})

    def _write(self, note: dict) -> None:
        try:
            with open(self.path, "a") as file:
                file.write(json.dumps(note) + "\n")
        except OSError:  # a folder gone: the parent reports what it can read
            pass

    def summary(self) -> list[dict]:
        """One entry per process seen: pid, how it started, its target, whether it is a
        DataLoader worker, and what torch work it did (``did``: sorted kinds)."""
        found: dict[int, dict] = {}
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                note = json.loads(line)
            except ValueError:
                continue  # a line cut short by a process that was killed
            pid = note.get("pid")
            if not isinstance(pid, int) or pid == self.pid:
                continue
            entry = found.setdefault(
                pid,
                {
                    "pid": pid,
                    "started": None,
                    "target": None,
                    "dataloader_worker": False,
                    "did": [],
                },
            )
            if "started" in note:
                entry["started"], entry["target"] = note["started"], note["target"]
                entry["dataloader_worker"] |= note["target"] == _DATALOADER_LOOP
            if "did" in note:
                entry["dataloader_worker"] |= bool(note.get("dataloader_worker"))
                if note["did"] not in entry["did"]:
                    entry["did"] = sorted([*entry["did"], note["did"]])
        return list(found.values())


def _start_method(process) -> str:
    popen = getattr(process, "_popen", None)
    method = getattr(popen, "method", None)
    if method:
        return str(method)
    context = getattr(process, "_ctx", None) or getattr(type(process), "_ctx", None)
    try:
        return context.get_start_method() if context is not None else "fork"
    except (AttributeError, ValueError):
        return "unknown"


def _target_name(process) -> str | None:
    target = getattr(process, "_target", None)
    if target is None:
        return None
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", None) or type(target).__name__
    return f"{module}.{name}" if module else name


def _in_dataloader_worker() -> bool:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover - torch without data utilities
        return False
    return get_worker_info() is not None
