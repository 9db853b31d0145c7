"""The trace: event schema, the versioned on-disk format, and streaming save/load.

A trace file is a magic string and a format version, then a sequence of records, each
``[kind: u8][payload length: u32][crc32 of payload: u32][payload]``:

- ``H`` header: JSON (versions, devices, determinism settings, argv, ...), always first;
- ``S`` strings: JSON list of strings appended to the trace's string table;
- ``C`` chunk: zlib-compressed columns of a run of consecutive events (see ``*_COLUMNS``);
- ``F`` footer: JSON (how the run ended, settings and seeds at the end), last when present.

Records are appended as the run goes, so a run that is killed leaves a trace that loads up to its
last complete record (``Trace.complete`` is then False). Nothing in a trace is ever executed or
unpickled on load.

Format versions (bump ``FORMAT_VERSION`` and add a line for every change; old files must load):
    1: first version.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bisector.errors import TraceError
from bisector.records import (
    MAX_INFLATED,
    Inflater,
    RecordWriter,
    parse_fields,
    parse_json,
    read,
    records,
)

MAGIC = b"BISECTR\x00"
FORMAT_VERSION = 1

PHASES = ("forward", "backward", "optimizer", "other")

# A location string: the user's "file.py:LINE", then, where library code issued the op, a tab and
# the innermost library frame's "file.py:LINE" (either part may be empty).
LOCATION_SEPARATOR = "\t"


def join_location(user: str, library: str) -> str:
    """The location string of an event from its user line and library line."""
    return f"{user}{LOCATION_SEPARATOR}{library}" if library else user


def split_location(text: str) -> tuple[str, str]:
    """(user line, library line) of a location string."""
    user, _, library = text.partition(LOCATION_SEPARATOR)
    return user, library


# One row per event.
EVENT_COLUMNS: dict[str, str] = {
    "op": "<u4",  # string id of the aten overload, or of "leaf.parameter" etc. for leaves
    "module": "<u4",  # string id of the module path ("layers.0.self_attn")
    "location": "<u4",  # string id of "file.py:LINE" (user's line, tab, library's: see below)
    "args": "<u4",  # string id of the canonical form of the non-tensor arguments
    "phase": "u1",  # index into PHASES
    "step": "<u4",  # optimizer steps completed before this event
    "n_in": "<u2",  # number of tensor inputs (rows in the input columns)
    "n_out": "<u2",  # number of written tensors (rows in the output columns)
    "flags": "u1",  # FLAG_* bits
}
# One row per tensor input, in event order.
INPUT_COLUMNS: dict[str, str] = {
    "in_back": "<u4",  # how many events back the producer of this input's value is; 0: untracked
    "in_slot": "<u2",  # which output of the producer
}
# One row per written tensor (fresh result or mutated argument), in event order.
OUTPUT_COLUMNS: dict[str, str] = {
    "out_kind": "u1",  # OUT_* bit flags
    "out_fp": "<i8",  # fingerprint (bit pattern of an unsigned 64-bit value)
    "out_sum": "<f8",  # float64 sum of the values
    "out_absmax": "<f4",  # largest absolute value
    "out_numel": "<i8",  # number of elements
    "out_prev_back": "<u4",  # for a partial in-place write: events back to the previous value
    "out_prev_slot": "<u2",
}
ALL_COLUMNS = {**EVENT_COLUMNS, **INPUT_COLUMNS, **OUTPUT_COLUMNS}

# Event data in one chunk record at most, leaving room for its metadata; one event always fits
# (at most 65535 inputs and outputs: under 3 MB).
_MAX_CHUNK_BYTES = MAX_INFLATED - (1 << 16)

FLAG_RANDOM = 1  # the call drew random numbers (a seeded random op, dropout not 0)
FLAG_WIDE = 2  # more tensor inputs than MAX_ROWS: only the first MAX_ROWS are recorded
# Tensor inputs and outputs recorded per event at most (their counts are 16-bit).
MAX_ROWS = 65535

OUT_HASHED = 1  # out_fp and stats are valid
OUT_NODATA = 2  # uninitialised memory (empty*): carries no data, equal by definition
OUT_UNHASHABLE = 4  # no plain bits (sparse, quantized, subclass): cannot be compared
OUT_PARTIAL = 8  # an in-place write into a view that does not cover its whole storage


@dataclass
class Trace:
    """A loaded trace: header, footer, string table and the event columns as numpy arrays.

    Attributes:
        path: where it was loaded from.
        header: what was known when recording started.
        footer: how the run ended; empty if the file was cut short.
        strings: the string table (ids in the op, module, location and args columns).
        columns: every column of ``ALL_COLUMNS``, concatenated over chunks.
        complete: False if the file ends without a footer (the run was killed).
    """

    path: str
    header: dict[str, Any]
    footer: dict[str, Any]
    strings: list[str]
    columns: dict[str, np.ndarray]
    complete: bool = True
    _in_start: np.ndarray | None = field(default=None, repr=False)
    _out_start: np.ndarray | None = field(default=None, repr=False)
    _in_event: np.ndarray | None = field(default=None, repr=False)
    _out_event: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.columns["op"].shape[0])

    @property
    def in_start(self) -> np.ndarray:
        """Index of each event's first row in the input columns (length: events + 1)."""
        if self._in_start is None:
            self._in_start = _offsets(self.columns["n_in"])
        return self._in_start

    @property
    def out_start(self) -> np.ndarray:
        """Index of each event's first row in the output columns (length: events + 1)."""
        if self._out_start is None:
            self._out_start = _offsets(self.columns["n_out"])
        return self._out_start

    @property
    def in_event(self) -> np.ndarray:
        """Per row of the input columns, the index of its event (the consumer)."""
        if self._in_event is None:
            self._in_event = _row_events(self.columns["n_in"])
        return self._in_event

    @property
    def out_event(self) -> np.ndarray:
        """Per row of the output columns, the index of its event (the producer)."""
        if self._out_event is None:
            self._out_event = _row_events(self.columns["n_out"])
        return self._out_event

    def string(self, column: str, event: int) -> str:
        """The string that ``column`` (op, module, location, args) holds for one event."""
        return self.strings[int(self.columns[column][event])]

    def event_summary(self, event: int) -> dict[str, Any]:
        """One event as a plain dict, for reports and debugging."""
        c = self.columns
        return {
            "index": event,
            "op": self.string("op", event),
            "module": self.string("module", event),
            "location": self.string("location", event),
            "args": self.string("args", event),
            "phase": PHASES[int(c["phase"][event])],
            "step": int(c["step"][event]),
        }

    @property
    def rank(self) -> int:
        return int(self.header.get("rank", 0))

    @property
    def world_size(self) -> int:
        """Processes in the job that recorded this trace (1 alone)."""
        return int(self.header.get("world_size", 1))


def _row_events(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts.astype(np.int64))


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


class TraceWriter:
    """Appends records to a trace file as a run goes; each record is flushed when written.

    Args:
        path: the file to create (its folder is created too).
        header: JSON-serialisable header.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self._records = RecordWriter(path, MAGIC, FORMAT_VERSION)
        self.path = self._records.path
        self._records.write(b"H", json.dumps(header, default=str).encode())
        self.events_written = 0

    @property
    def bytes_written(self) -> int:
        return self._records.bytes_written

    def add_strings(self, strings: list[str]) -> None:
        """Append strings to the table; their ids continue from the last ones written."""
        if strings:
            self._records.write(b"S", json.dumps(strings).encode())

    def add_chunk(self, columns: dict[str, np.ndarray]) -> None:
        """Append a run of events; ``columns`` must hold every column of ``ALL_COLUMNS``.

        A run too large for one record (a reader inflates at most ``MAX_INFLATED`` bytes of
        one) is written as several.
        """
        arrays = {
            name: np.ascontiguousarray(columns[name], dtype=dtype)
            for name, dtype in ALL_COLUMNS.items()
        }
        events = len(arrays["op"])
        if events > 1 and sum(a.nbytes for a in arrays.values()) > _MAX_CHUNK_BYTES:
            half = events // 2
            rows = {
                **dict.fromkeys(EVENT_COLUMNS, half),
                **dict.fromkeys(INPUT_COLUMNS, int(arrays["n_in"][:half].sum())),
                **dict.fromkeys(OUTPUT_COLUMNS, int(arrays["n_out"][:half].sum())),
            }
            self.add_chunk({name: a[: rows[name]] for name, a in arrays.items()})
            self.add_chunk({name: a[rows[name] :] for name, a in arrays.items()})
            return
        body = json.dumps([[name, len(a)] for name, a in arrays.items()]).encode()
        payload = b"".join(
            [struct.pack("<I", len(body)), body, *(a.tobytes() for a in arrays.values())]
        )
        self._records.write(b"C", zlib.compress(payload, 1))
        self.events_written += events

    def close(self, footer: dict[str, Any]) -> None:
        """Write the footer and close the file. Safe to call twice."""
        if self._records.closed:
            return
        self._records.write(b"F", json.dumps(footer, default=str).encode())
        self._records.close()

    def abandon(self) -> None:
        """Close without a footer (the file then loads as incomplete)."""
        self._records.close()


def load(path: str | os.PathLike) -> Trace:
    """Load a trace file.

    Args:
        path: a file written by ``bisector record`` or ``bisector find``.

    Returns:
        The trace. A file cut short (killed run) loads up to its last complete record, with
        ``complete=False``.

    Raises:
        TraceError: the file is missing, is not a trace, has an unknown format version, or is
            corrupt.
    """
    path = Path(path)
    _, data = read(path, MAGIC, FORMAT_VERSION, "trace", "record one with `bisector record`")
    return _parse(path, data, len(MAGIC) + 4)


def _parse(path: Path, data: bytes, pos: int) -> Trace:
    header: dict[str, Any] | None = None
    footer: dict[str, Any] = {}
    strings: list[str] = []
    chunks: list[dict[str, np.ndarray]] = []
    complete = False
    inflate = Inflater(path, len(data))
    for kind, payload, offset in records(path, data, pos):
        if kind == b"H":
            header = parse_fields(path, payload, offset)
        elif kind == b"S":
            strings.extend(str(s) for s in parse_json(path, payload, offset, list))
        elif kind == b"C":
            try:
                chunks.append(_parse_chunk(inflate(payload, offset)))
            except (ValueError, RecursionError, struct.error) as exc:
                raise TraceError(f"{path} is corrupt (chunk at byte {offset}: {exc})") from None
        elif kind == b"F":
            footer = parse_fields(path, payload, offset)
            complete = True
        else:
            raise TraceError(f"{path} is corrupt (unknown record kind {kind!r} at byte {offset})")
    if header is None:
        raise TraceError(f"{path} is corrupt or empty (no header record)")
    columns = {
        name: (np.concatenate([c[name] for c in chunks]) if chunks else np.zeros(0, dtype))
        for name, dtype in ALL_COLUMNS.items()
    }
    trace = Trace(str(path), header, footer, strings, columns, complete)
    _validate(trace)
    return trace


def _parse_chunk(raw: bytes) -> dict[str, np.ndarray]:
    """The columns of an inflated chunk record."""
    (meta_len,) = struct.unpack_from("<I", raw, 0)
    meta = json.loads(raw[4 : 4 + meta_len])
    if not isinstance(meta, list) or not all(_is_column(entry) for entry in meta):
        raise ValueError("chunk metadata is not a list of [column, count]")
    pos = 4 + meta_len
    out: dict[str, np.ndarray] = {}
    for name, count in meta:
        dtype = np.dtype(ALL_COLUMNS.get(name, "u1"))
        size = count * dtype.itemsize
        if count < 0 or pos + size > len(raw):
            raise ValueError("column runs past the end of its chunk")
        if name in ALL_COLUMNS:
            out[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=pos).copy()
        pos += size
    missing = set(ALL_COLUMNS) - set(out)
    if missing:
        raise ValueError(f"chunk lacks columns {sorted(missing)}")
    return out


def _is_column(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], int)
    )


def _validate(trace: Trace) -> None:
    """Check the columns agree with each other, so analysis can index without bounds checks."""
    c = trace.columns
    n = len(trace)
    name = trace.path
    if any(len(c[k]) != n for k in EVENT_COLUMNS):
        raise TraceError(f"{name} is corrupt (event columns of different lengths)")
    for group in (INPUT_COLUMNS, OUTPUT_COLUMNS):
        if len({len(c[k]) for k in group}) > 1:
            raise TraceError(f"{name} is corrupt (input or output columns of different lengths)")
    if int(c["n_in"].sum()) != len(c["in_back"]) or int(c["n_out"].sum()) != len(c["out_fp"]):
        raise TraceError(f"{name} is corrupt (input or output counts do not add up)")
    for column in ("op", "module", "location", "args"):
        if n and int(c[column].max()) >= len(trace.strings):
            raise TraceError(f"{name} is corrupt (string id out of range in column {column})")
    if n and int(c["phase"].max()) >= len(PHASES):
        raise TraceError(f"{name} is corrupt (unknown phase)")
    consumer = trace.in_event
    if len(consumer) and bool((c["in_back"].astype(np.int64) > consumer).any()):
        raise TraceError(f"{name} is corrupt (an input refers to an event before the first)")
    back = c["in_back"].astype(np.int64)
    tracked = back > 0
    if tracked.any():
        source = (consumer - back)[tracked]
        if bool((c["in_slot"][tracked] >= c["n_out"][source]).any()):
            raise TraceError(
                f"{name} is corrupt (an input refers to an output that does not exist)"
            )
    producer = trace.out_event
    prev_back = c["out_prev_back"].astype(np.int64)
    if len(producer) and bool((prev_back > producer).any()):
        raise TraceError(f"{name} is corrupt (an output refers to an event before the first)")
    partial = prev_back > 0
    if partial.any():
        previous = (producer - prev_back)[partial]
        if bool((c["out_prev_slot"][partial] >= c["n_out"][previous]).any()):
            raise TraceError(
                f"{name} is corrupt (an output refers to a previous value that does not exist)"
            )
