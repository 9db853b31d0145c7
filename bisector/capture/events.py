"""The events recorded since the last chunk, as typed columns, and the trace's string table.

The Recorder decides what to record; this buffer keeps it (rows of numbers, the fingerprints queued
on their devices) and writes it to the trace one chunk at a time, as typed columns.
"""

from __future__ import annotations

import numpy as np
import torch

from bisector.capture.fingerprint import Collector, hashable, plain_values, sparse_hashable
from bisector.trace import OUT_HASHED, OUT_NODATA, OUT_PARTIAL, OUT_UNHASHABLE, TraceWriter

_EVENT_COLUMNS = ("op", "module", "location", "args", "phase", "step", "n_in", "n_out", "flags")
_INPUT_COLUMNS = ("in_back", "in_slot")
_OUTPUT_COLUMNS = ("out_kind", "out_numel", "out_prev_back", "out_prev_slot")
_DTYPES = {
    "op": np.uint32,
    "module": np.uint32,
    "location": np.uint32,
    "args": np.uint32,
    "phase": np.uint8,
    "step": np.uint32,
    "n_in": np.uint16,
    "n_out": np.uint16,
    "flags": np.uint8,
    "in_back": np.uint32,
    "in_slot": np.uint16,
    "out_kind": np.uint8,
    "out_numel": np.int64,
    "out_prev_back": np.uint32,
    "out_prev_slot": np.uint16,
}


class EventBuffer:
    """Buffers events and writes them to a trace in chunks.

    Rows are kept as Python tuples (one append per event or output: the cheapest a recorded op
    can pay) and become typed columns once per chunk.

    Args:
        chunk_events: events buffered before a chunk is written (and fingerprints read back).

    Attributes:
        writer: the trace writer, set when recording starts.
        count: events recorded so far, written or not; the index of the next event.
        collector: fingerprints and stats of the buffered outputs, queued on their devices.
    """

    def __init__(self, chunk_events: int):
        self.chunk_events = chunk_events
        self.writer: TraceWriter | None = None
        self.count = 0
        self.collector = Collector()
        self._strings: dict[str, int] = {}
        self._texts: list[str] = []  # id -> string
        self._new_strings: list[str] = []
        self._events: list[tuple] = []  # (op, module, location, args, phase, step, n_in, ...)
        self._inputs: list[int] = []  # in_back, in_slot, in_back, in_slot, ...
        self._outputs: list[tuple[int, int, int, int]] = []  # kind, numel, prev back, prev slot

    def string(self, text: str) -> int:
        """The id of a string in the trace's string table (added if new)."""
        string_id = self._strings.get(text)
        if string_id is None:
            string_id = self._strings[text] = len(self._strings)
            self._new_strings.append(text)
            self._texts.append(text)
        return string_id

    def text(self, string_id: int) -> str:
        """The string of an id of ``string``."""
        return self._texts[string_id]

    def add_output(self, t: torch.Tensor, no_data: bool, previous, index: int) -> None:
        """Add a tensor written by event ``index``.

        Args:
            no_data: the tensor is uninitialised memory (not fingerprinted).
            previous: for a partial in-place write, (event, slot) of the value it overwrote.
        """
        t = plain_values(t)
        if no_data:
            kind = OUT_NODATA
            self.collector.add_blank()
        elif not hashable(t):
            if sparse_hashable(t):
                kind = OUT_HASHED
                self.collector.add_sparse(t)
            else:
                kind = OUT_UNHASHABLE
                self.collector.add_blank()
        else:
            kind = OUT_HASHED
            self.collector.add(t)
        if previous is not None and previous[0] >= 0:
            self._outputs.append((kind | OUT_PARTIAL, t.numel(), index - previous[0], previous[1]))
        else:
            self._outputs.append((kind, t.numel(), 0, 0))

    def add_event(
        self, op, module_id, location_id, args_id, phase, step, refs, n_out, flags=0
    ) -> None:
        """Add one event whose outputs were just added; ``refs`` are (producer, slot) pairs.
        ``op``: the op's name, or its string id."""
        index = self.count
        inputs = self._inputs
        for producer, slot in refs:
            inputs += (index - producer if producer >= 0 else 0, slot)
        op_id = op if type(op) is int else self.string(op)
        self._events.append(
            (op_id, module_id, location_id, args_id, phase, step, len(refs), n_out, flags)
        )
        self.count = index + 1
        if len(self._events) >= self.chunk_events:
            self.flush()

    def flush(self) -> None:
        """Read fingerprints back and write the buffered events as one chunk."""
        if self.writer is None:
            return
        self.writer.add_strings(self._new_strings)
        self._new_strings = []
        self._trim_to_complete_events()
        if not self._events:
            return
        fps, sums, maxes = self.collector.drain()
        columns = _columns(_EVENT_COLUMNS, self._events)
        columns.update(_columns(_INPUT_COLUMNS, self._inputs))
        columns.update(_columns(_OUTPUT_COLUMNS, self._outputs))
        columns.update(out_fp=fps, out_sum=sums, out_absmax=maxes)
        self.writer.add_chunk(columns)
        self._events, self._inputs, self._outputs = [], [], []

    def _trim_to_complete_events(self) -> None:
        """Drop what a half-recorded event left (Ctrl-C can land between the appends of one
        event; its own row is appended last, at once): inputs and outputs past the complete
        events, and an event whose outputs did not all reach the collector."""
        events = self._events
        del self._inputs[2 * sum(event[6] for event in events) :]
        claimed = sum(event[7] for event in events)
        kept = min(claimed, len(self.collector), len(self._outputs))
        while claimed > kept:
            claimed -= events.pop()[7]
            self.count -= 1
        del self._outputs[claimed:]
        self.collector.truncate(claimed)


def _columns(names: tuple[str, ...], rows: list) -> dict[str, np.ndarray]:
    """Typed columns from rows of ``len(names)`` numbers (or a flat list of them)."""
    table = np.array(rows, dtype=np.int64).reshape(-1, len(names))
    return {name: table[:, i].astype(_DTYPES[name]) for i, name in enumerate(names)}
