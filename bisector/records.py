"""Record framing shared by trace and digest files: append-only, checksummed, crash-safe.

A file is a magic string, a format version (u32), then records, each
``[kind: 1 byte][payload length: u32][crc32 of payload: u32][payload]``, flushed as written.
A writer that is killed leaves a file that reads up to its last complete record.

A checksum proves a record is what was written, not that it is sane: the helpers here also check
what a payload holds (its JSON shape, the header and footer fields bisector reads back, how far
it inflates), so a hostile file is one clear error, never a crash or gigabytes of memory.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bisector.errors import TraceError

_RECORD = struct.Struct("<cII")
# A record larger than this is corruption, not data.
_MAX_RECORD = 1 << 31
# No compressed payload inflates beyond this (a chunk of the recorder's 16384 events takes a few
# MB; writers split larger ones): a small payload that claims more is a zlib bomb, refused after
# inflating this much, not gigabytes.
MAX_INFLATED = 1 << 26
# Header and footer fields bisector reads back, with their JSON types (trace and digest files
# share them); a file that holds another type there is corrupt. Other fields are free-form.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "argv": list,
    "cwd": str,
    "rank": int,
    "versions": dict,
    "settings": dict,
    "seeds_at_start": dict,
    "steps": int,
    "seconds": (int, float),
    "settings_at_end": dict,
    "seeds_at_end": dict,
    "optimizers": list,
    "modules": list,
}


class RecordWriter:
    """Appends records to a new file.

    Args:
        path: the file to create (its folder is created too).
        magic: the file kind's magic bytes.
        version: its format version.
    """

    def __init__(self, path: str | os.PathLike, magic: bytes, version: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(magic + struct.pack("<I", version))
        self.bytes_written = self._file.tell()

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, kind: bytes, payload: bytes) -> None:
        """Append one record and flush it to the operating system."""
        assert self._file is not None, f"{self.path} already closed"
        self._file.write(_RECORD.pack(kind, len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        self.bytes_written = self._file.tell()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_bytes(path: Path, what: str, count: int = -1) -> bytes:
    """The file's bytes (the first ``count``; all by default), or a one-line TraceError that
    names it as ``what`` ("trace", "digest file", "file")."""
    try:
        with open(path, "rb") as file:
            return file.read(count)
    except FileNotFoundError:
        raise TraceError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise TraceError(f"{path} is a folder, not a {what}") from None
    except OSError as exc:
        raise TraceError(f"cannot read {what} {path}: {exc.strerror}") from None


def read(path: Path, magic: bytes, newest: int, what: str, hint: str) -> tuple[int, bytes]:
    """Read a whole record file and check its magic and version.

    Args:
        path: the file.
        magic: the expected magic bytes.
        newest: the newest format version this bisector reads.
        what: the kind of file, for messages ("trace", "digest file").
        hint: how to make one, for the message when the file is of another kind.

    Returns:
        (format version, the file's bytes); records start at ``len(magic) + 4``.

    Raises:
        TraceError: missing, unreadable, of another kind, or of an unknown version.
    """
    data = read_bytes(path, what)
    if not data.startswith(magic) or len(data) < len(magic) + 4:
        raise TraceError(f"{path} is not a bisector {what} ({hint})")
    (version,) = struct.unpack_from("<I", data, len(magic))
    if version > newest:
        raise TraceError(
            f"{path} has {what} format version {version}, newer than this bisector reads "
            f"({newest}); upgrade bisector"
        )
    if version < 1:
        raise TraceError(f"{path} has an unknown {what} format version {version}")
    return version, data


def records(path: Path, data: bytes, pos: int) -> Iterator[tuple[bytes, bytes, int]]:
    """The complete records of ``data`` from ``pos``: (kind, payload, offset of the record).

    A record cut short at the end (a killed writer) ends the iteration quietly.

    Raises:
        TraceError: a checksum mismatch or an impossible length (corruption, not a cut).
    """
    while pos + _RECORD.size <= len(data):
        kind, length, crc = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        if length > _MAX_RECORD:
            raise TraceError(f"{path} is corrupt (record at byte {pos} claims {length} bytes)")
        if start + length > len(data):
            if _record_ends_at_end(data, start):  # a later record is whole: not a cut
                raise TraceError(
                    f"{path} is corrupt (the record at byte {pos} claims {length} bytes, past the "
                    "end, yet a whole record ends the file)"
                )
            return
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            raise TraceError(f"{path} is corrupt (checksum mismatch in the record at byte {pos})")
        yield kind, payload, pos
        pos = start + length


# How far back from the end of a file a whole last record is looked for (see below).
_TAIL_SCAN = 16 << 20


def _record_ends_at_end(data: bytes, after: int) -> bool:
    """True if a whole record (its length and checksum right) ends exactly at the end of
    ``data``, starting after ``after``. A writer that was killed leaves its last record cut
    short, so a record that claims to run past the end is then a cut; in a file whose last
    record is whole, it is a corrupt length instead."""
    end = len(data)
    for pos in range(end - _RECORD.size, max(after, end - _TAIL_SCAN) - 1, -1):
        _, length, crc = _RECORD.unpack_from(data, pos)
        if pos + _RECORD.size + length == end and zlib.crc32(data[pos + _RECORD.size :]) == crc:
            return True
    return False


class Inflater:
    """Decompresses the records of one file within a budget for the whole file:
    ``MAX_INFLATED`` plus ``MAX_RATIO`` times the file's size. Real traces and digest files
    inflate to one or two times their size; a file of many small zlib bombs, each under the
    per-record cap, is refused before it takes a thousand times its size in memory.

    Args:
        path: the file (for error messages).
        size: its size in bytes.
    """

    MAX_RATIO = 32

    def __init__(self, path: Path, size: int):
        self.path = path
        self.left = MAX_INFLATED + self.MAX_RATIO * size

    def __call__(self, payload: bytes, offset: int) -> bytes:
        raw = inflate(self.path, payload, offset, min(MAX_INFLATED, self.left + 1))
        self.left -= len(raw)
        if self.left < 0:
            raise TraceError(
                f"{self.path} is corrupt (its records inflate to more than {self.MAX_RATIO} "
                "times its size)"
            )
        return raw


def inflate(path: Path, payload: bytes, offset: int, limit: int = MAX_INFLATED) -> bytes:
    """Decompress a record's zlib payload, refusing to inflate beyond ``limit`` bytes (at most
    ``MAX_INFLATED``).

    Raises:
        TraceError: not zlib, cut short, followed by other bytes, or too large when inflated.
    """
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(payload, limit)
    except zlib.error:
        raise TraceError(
            f"{path} is corrupt (the record at byte {offset} does not inflate)"
        ) from None
    if len(raw) == limit and not inflater.eof:
        raise TraceError(
            f"{path} is corrupt (the record at byte {offset} inflates to more than "
            + (f"{MAX_INFLATED >> 20} MiB)" if limit == MAX_INFLATED else "the file allows)")
        )
    if not inflater.eof or inflater.unused_data:
        raise TraceError(f"{path} is corrupt (the record at byte {offset} does not inflate)")
    return raw


def parse_json(path: Path, payload: bytes, offset: int, shape: type[dict] | type[list]) -> Any:
    """The JSON a record holds, which must be an object (``dict``) or a list.

    Raises:
        TraceError: not JSON, nested too deeply to parse, or JSON of another shape.
    """
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise TraceError(f"{path} is corrupt (the record at byte {offset} is not JSON)") from None
    if not isinstance(value, shape):
        what = "an object" if shape is dict else "a list"
        raise TraceError(f"{path} is corrupt (the record at byte {offset} is not {what})")
    return value


def parse_fields(path: Path, payload: bytes, offset: int) -> dict[str, Any]:
    """A header or footer record: a JSON object whose known fields have their types.

    Raises:
        TraceError: as ``parse_json``, or a field bisector reads holds another type.
    """
    fields = parse_json(path, payload, offset, dict)
    for key, expected in _FIELD_TYPES.items():
        if key in fields and not isinstance(fields[key], expected):
            raise _field_error(path, offset, key, fields[key])
    for key in ("settings", "settings_at_end"):  # their environment variables, read as a dict
        env = fields.get(key, {}).get("env", {})
        if not isinstance(env, dict):
            raise _field_error(path, offset, f"{key}.env", env)
    return fields


def _field_error(path: Path, offset: int, key: str, value: Any) -> TraceError:
    return TraceError(
        f"{path} is corrupt (field {key!r} of the record at byte {offset} is a "
        f"{type(value).__name__})"
    )
