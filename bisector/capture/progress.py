"""A rank's progress, in a small memory-mapped file the parent reads while the job runs: events
recorded, current step, and the collective the rank is waiting in, if any.

Updating it is a few memory stores per op (no system call), so a watchdog can tell a rank that
stopped making progress on its own (a hang) from ranks waiting for it in a collective.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

# events recorded, step, waiting in a collective (0/1), the collective's name
_LAYOUT = struct.Struct("<qqq96s")


class Progress:
    """Writer side, owned by the Recorder of one rank.

    Args:
        path: the file to create.
    """

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "w+b")  # noqa: SIM115 - closed in close()
        self._file.write(b"\0" * _LAYOUT.size)
        self._file.flush()
        self._map = mmap.mmap(self._file.fileno(), _LAYOUT.size)
        self._name = b""

    def update(self, events: int, step: int) -> None:
        struct.pack_into("<qq", self._map, 0, events, step)

    def waiting(self, collective: str | None) -> None:
        """Mark the start (a name) or the end (None) of a wait in a collective."""
        if collective is None:
            struct.pack_into("<q", self._map, 16, 0)
            return
        struct.pack_into("<q96s", self._map, 16, 1, collective.encode()[:96])

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._file is not None:
            self._map.close()
            self._file.close()
            self._file = None  # type: ignore[assignment]


def read(path: str | os.PathLike) -> dict | None:
    """The progress a rank last wrote, or None if it has not started one."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) < _LAYOUT.size:
        return None
    events, step, waiting, name = _LAYOUT.unpack_from(data)
    return {
        "events": events,
        "step": step,
        "collective": name.rstrip(b"\0").decode(errors="replace") if waiting else None,
    }
