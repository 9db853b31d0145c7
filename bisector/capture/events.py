"""The events recorded since the last chunk, as typed columns, and the trace's string table.

The Recorder decides what to record; this buffer keeps it compactly (Python ``array`` columns, the
fingerprints queued on their devices) and writes it to the trace one chunk at a time.
"""

from __future__ import annotations

from array import array

import numpy as np
import torch

from bisector.capture.fingerprint import Collector, hashable, plain_values
from bisector.trace import OUT_HASHED, OUT_NODATA, OUT_PARTIAL, OUT_UNHASHABLE, TraceWriter

_EVENT_COLUMNS = ("op", "module", "location", "args", "phase", "step", "n_in", "n_out", "flags")
_INPUT_COLUMNS = ("in_back", "in_slot")
_OUTPUT_COLUMNS = ("out_kind", "out_numel", "out_prev_back", "out_prev_slot")
_TYPECODES = {
    "op": "I",
    "module": "I",
    "location": "I",
    "args": "I",
    "phase": "B",
    "step": "I",
    "n_in": "H",
    "n_out": "H",
    "flags": "B",
    "in_back": "I",
    "in_slot": "H",
    "out_kind": "B",
    "out_numel": "q",
    "out_prev_back": "I",
    "out_prev_slot": "H",
}


class EventBuffer:
    """Buffers events and writes them to a trace in chunks.

    Args:
        chunk_events: events buffered before a chunk is written (and fingerprints read back).

    Attributes:
        writer: the trace writer, set when recording starts.
        count: events recorded so far, written or not; the index of the next event.
        columns: the buffered columns (see trace.py for their meaning).
        collector: fingerprints and stats of the buffered outputs, queued on their devices.
    """

    def __init__(self, chunk_events: int):
        self.chunk_events = chunk_events
        self.writer: TraceWriter | None = None
        self.count = 0
        self.collector = Collector()
        self._strings: dict[str, int] = {}
        self._new_strings: list[str] = []
        self.columns: dict[str, array] = {}
        self._reset()

    def _reset(self) -> None:
        self.columns = {name: array(code) for name, code in _TYPECODES.items()}

    def string(self, text: str) -> int:
        """The id of a string in the trace's string table (added if new)."""
        string_id = self._strings.get(text)
        if string_id is None:
            string_id = self._strings[text] = len(self._strings)
            self._new_strings.append(text)
        return string_id

    def add_output(self, t: torch.Tensor, no_data: bool, previous, index: int) -> None:
        """Add a tensor written by event ``index``.

        Args:
            no_data: the tensor is uninitialised memory (not fingerprinted).
            previous: for a partial in-place write, (event, slot) of the value it overwrote.
        """
        c = self.columns
        t = plain_values(t)
        if no_data:
            kind = OUT_NODATA
            self.collector.add_blank()
        elif not hashable(t):
            kind = OUT_UNHASHABLE
            self.collector.add_blank()
        else:
            kind = OUT_HASHED
            self.collector.add(t)
        if previous is not None and previous[0] >= 0:
            kind |= OUT_PARTIAL
            c["out_prev_back"].append(index - previous[0])
            c["out_prev_slot"].append(previous[1])
        else:
            c["out_prev_back"].append(0)
            c["out_prev_slot"].append(0)
        c["out_kind"].append(kind)
        c["out_numel"].append(t.numel())

    def add_event(
        self, op, module_id, location_id, args_id, phase, step, refs, n_out, flags=0
    ) -> None:
        """Add one event whose outputs were just added; ``refs`` are (producer, slot) pairs."""
        c = self.columns
        index = self.count
        c["op"].append(self.string(op))
        c["flags"].append(flags)
        c["module"].append(module_id)
        c["location"].append(location_id)
        c["args"].append(args_id)
        c["phase"].append(phase)
        c["step"].append(step)
        c["n_in"].append(len(refs))
        c["n_out"].append(n_out)
        for producer, slot in refs:
            c["in_back"].append(index - producer if producer >= 0 else 0)
            c["in_slot"].append(slot)
        self.count += 1
        if len(c["op"]) >= self.chunk_events:
            self.flush()

    def flush(self) -> None:
        """Read fingerprints back and write the buffered events as one chunk."""
        if self.writer is None:
            return
        self.writer.add_strings(self._new_strings)
        self._new_strings = []
        self._trim_to_complete_events()
        if not len(self.columns["op"]):
            return
        fps, sums, maxes = self.collector.drain()
        columns = {
            name: np.array(values, dtype=values.typecode) for name, values in self.columns.items()
        }
        columns.update(out_fp=fps, out_sum=sums, out_absmax=maxes)
        self.writer.add_chunk(columns)
        self._reset()

    def _trim_to_complete_events(self) -> None:
        """Drop a half-recorded event (Ctrl-C can land between two appends of one event)."""
        c = self.columns
        events = min(len(c[name]) for name in _EVENT_COLUMNS)
        in_rows = min(len(c[name]) for name in _INPUT_COLUMNS)
        out_rows = min(min(len(c[name]) for name in _OUTPUT_COLUMNS), len(self.collector))
        ends_in = np.cumsum(np.array(c["n_in"][:events], dtype=np.int64))
        ends_out = np.cumsum(np.array(c["n_out"][:events], dtype=np.int64))
        complete = int(np.sum((ends_in <= in_rows) & (ends_out <= out_rows)))
        keep_in = int(ends_in[complete - 1]) if complete else 0
        keep_out = int(ends_out[complete - 1]) if complete else 0
        for names, keep in (
            (_EVENT_COLUMNS, complete),
            (_INPUT_COLUMNS, keep_in),
            (_OUTPUT_COLUMNS, keep_out),
        ):
            for name in names:
                del c[name][keep:]
        self.collector.truncate(keep_out)
