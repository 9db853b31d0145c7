"""Pair the events of two traces, also past the places where their op streams stop matching.

Two events match when they call the same op, in the same module and phase, with as many tensor
inputs and outputs. The streams are paired along their longest common prefix; where they stop
matching (a *break*: a data-dependent branch, an early stop, another number of batches) the
aligner looks for the nearest place where they match again for ``RESYNC_RUN`` events in a row,
skipping the fewest events of both runs, and pairs on from there. Events skipped by a break have
no partner and are not compared; pairs after a break are found by op names only, so they may be
misaligned (the report says so).

Run B's events are then *projected* into run A's numbering (``project``): a trace with one event
per event of A, where each paired event holds B's columns, inputs refer to producers by A's
numbering, and an unpaired event is a copy of A's (equal by construction, so it never shows as a
difference). The comparison in ``graph`` then works on two streams of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bisector.report import StructureBreak
from bisector.trace import Trace

# Events in a row that must match for the streams to count as matching again after a break.
RESYNC_RUN = 8
# How far ahead in run A a break looks for the place where the streams match again.
RESYNC_WINDOW = 1 << 18
# Breaks followed at most; after that many, the rest of both streams is left unpaired.
MAX_BREAKS = 200
# In a projected trace: an input or previous value whose producer in run B has no partner in A.
NO_PARTNER = np.uint32(0xFFFFFFFF)


@dataclass
class Break:
    """A place where the op streams stop matching.

    Attributes:
        a: first unpaired event of run A (``len(A)`` if A ended there).
        b: first unpaired event of run B.
        resume_a: where the streams match again in A, or None if they never do.
        resume_b: where they match again in B, or None.
        reason: what differs, in words.
    """

    a: int
    b: int
    resume_a: int | None
    resume_b: int | None
    reason: str

    def to_dict(self) -> StructureBreak:
        return {
            "event": self.a,
            "event_b": self.b,
            "resumed_at": self.resume_a,
            "resumed_at_b": self.resume_b,
            "reason": self.reason,
        }


@dataclass
class Alignment:
    """Which event of run B each event of run A is paired with.

    Attributes:
        b_of_a: per event of A, its partner in B (-1: unpaired). Pairs keep the order of both
            streams.
        breaks: where the streams stop matching, in order (empty: they match throughout).
        ids_b_to_a: maps string ids of trace B to those of trace A (negative for strings A lacks).
        prefix: length of the common prefix (events paired before the first break).
    """

    b_of_a: np.ndarray
    breaks: list[Break]
    ids_b_to_a: np.ndarray
    prefix: int
    truncated: bool = field(default=False)

    @property
    def paired(self) -> int:
        """Number of paired events."""
        return int(np.count_nonzero(self.b_of_a >= 0))


def string_map(a: Trace, b: Trace) -> np.ndarray:
    """For each string id of ``b``, the id of the same string in ``a`` (or a unique negative)."""
    index = {s: i for i, s in enumerate(a.strings)}
    return np.array(
        [index.get(s, -1 - k) for k, s in enumerate(b.strings)], dtype=np.int64
    ).reshape(-1)


def _tokens(trace: Trace, ids: np.ndarray | None) -> np.ndarray:
    """One uint64 per event, equal for matching events (op, module, phase, inputs, outputs)."""
    c = trace.columns
    op = c["op"].astype(np.int64)
    module = c["module"].astype(np.int64)
    if ids is not None:  # run B: string ids in A's numbering
        op, module = ids[op] if len(op) else op, ids[module] if len(module) else module
    with np.errstate(over="ignore"):
        token = op.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        token ^= module.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        token += c["phase"].astype(np.uint64) << np.uint64(56)
        token += c["n_in"].astype(np.uint64) << np.uint64(40)
        token += c["n_out"].astype(np.uint64) << np.uint64(24)
    return token


def _run_hashes(tokens: np.ndarray) -> np.ndarray:
    """Per position p, a hash of tokens[p : p + RESYNC_RUN] (positions that have a full run)."""
    n = len(tokens) - RESYNC_RUN + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(RESYNC_RUN):
            hashes = hashes * np.uint64(0x100000001B3) + tokens[t : t + n]
    return hashes


def _common_run(ta: np.ndarray, tb: np.ndarray, i: int, j: int) -> int:
    """Length of the run of matching tokens from ta[i] and tb[j]; compares growing blocks so
    that a long match costs a few vector compares and a short one stays cheap."""
    length, block = 0, 64
    limit = min(len(ta) - i, len(tb) - j)
    while length < limit:
        size = min(block, limit - length)
        same = ta[i + length : i + length + size] == tb[j + length : j + length + size]
        differ = np.flatnonzero(~same)
        if len(differ):
            return length + int(differ[0])
        length += size
        block *= 4
    return length


class _Resync:
    """Finds, after a break at (i, j), the nearest (p, q) where RESYNC_RUN events match.

    Run B's run hashes are sorted once as keys ``hash-prefix | position``: the first occurrence
    of a hash at or after j is one binary search, for all candidate positions of A at once.
    """

    def __init__(self, ta: np.ndarray, tb: np.ndarray):
        self.ta, self.tb = ta, tb
        self.ha = _run_hashes(ta)
        hb = _run_hashes(tb)
        self.bits = max(1, int(len(tb)).bit_length())
        self.low = np.uint64((1 << self.bits) - 1)
        keys = (hb & ~self.low) | np.arange(len(hb), dtype=np.uint64)
        self.keys = np.sort(keys)

    def find(self, i: int, j: int) -> tuple[int, int] | None:
        candidates = self.ha[i : i + RESYNC_WINDOW]
        if not len(candidates) or not len(self.keys):
            return None
        wanted = (candidates & ~self.low) | np.uint64(j)
        at = np.searchsorted(self.keys, wanted)
        found = at < len(self.keys)
        keys = self.keys[np.minimum(at, len(self.keys) - 1)]
        found &= (keys & ~self.low) == (candidates & ~self.low)
        offsets = np.flatnonzero(found)
        if not len(offsets):
            return None
        q = (keys[offsets] & self.low).astype(np.int64)
        cost = offsets + (q - j)  # events skipped in A plus events skipped in B
        for k in np.argsort(cost, kind="stable")[:64]:  # the cheapest true match (hashes collide)
            p, qq = i + int(offsets[k]), int(q[k])
            if np.array_equal(self.ta[p : p + RESYNC_RUN], self.tb[qq : qq + RESYNC_RUN]):
                return p, qq
        return None


def align(a: Trace, b: Trace) -> Alignment:
    """Pair the events of two traces: the common prefix, then past each break."""
    ids = string_map(a, b)
    ta, tb = _tokens(a, None), _tokens(b, ids)
    na, nb = len(ta), len(tb)
    b_of_a = np.full(na, -1, dtype=np.int64)
    breaks: list[Break] = []
    resync: _Resync | None = None
    i = j = 0
    prefix = None
    truncated = False
    while True:
        run = _common_run(ta, tb, i, j)
        b_of_a[i : i + run] = np.arange(j, j + run)
        i, j = i + run, j + run
        if prefix is None:
            prefix = i
        if i == na and j == nb:
            break
        if len(breaks) == MAX_BREAKS:
            truncated = True
            break
        if i == na or j == nb:
            breaks.append(Break(i, j, None, None, _ended(a, b, i, j)))
            break
        resync = resync or _Resync(ta, tb)
        found = resync.find(i, j) or _common_end(ta, tb, i, j)
        reason = _differs(a, b, i, j)
        if found is None:
            breaks.append(Break(i, j, None, None, reason + "; they never match again"))
            break
        p, q = found
        reason += f"; they match again from event {p} of run A and {q} of run B"
        if p > i or q > j:
            reason += f" ({_events(p - i)} of run A and {q - j} of run B have no partner)"
        breaks.append(Break(i, j, p, q, reason))
        i, j = p, q
    return Alignment(b_of_a, breaks, ids, prefix or 0, truncated)


def _common_end(ta: np.ndarray, tb: np.ndarray, i: int, j: int) -> tuple[int, int] | None:
    """Where the common suffix of both streams starts, if it lies past (i, j): a short tail
    that matches again (fewer than RESYNC_RUN events) is still paired."""
    limit = min(len(ta) - i, len(tb) - j)  # (i, j) itself differs, so it is never reached
    length = min(_common_run(ta[::-1], tb[::-1], 0, 0), limit)
    return (len(ta) - length, len(tb) - length) if length else None


def _differs(a: Trace, b: Trace, i: int, j: int) -> str:
    op_a, op_b = a.string("op", i), b.string("op", j)
    if op_a != op_b:
        return f"run A calls {op_a} where run B calls {op_b}"
    module_a, module_b = a.string("module", i), b.string("module", j)
    if module_a != module_b:
        where_a, where_b = module_a or "(no module)", module_b or "(no module)"
        return f"{op_a} runs in {where_a} in run A, in {where_b} in run B"
    if a.columns["phase"][i] != b.columns["phase"][j]:
        return f"{op_a} runs in another phase in the two runs"
    return f"{op_a} gets different numbers of tensors in the two runs"


def _ended(a: Trace, b: Trace, i: int, j: int) -> str:
    if i == len(a):
        return f"run A ends after {_events(i)}; run B records {len(b) - j} more"
    return f"run B ends after {_events(j)}; run A records {len(a) - i} more"


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def project(b: Trace, alignment: Alignment, a: Trace) -> Trace:
    """Run B's events in run A's numbering (see the module's docstring).

    An input (or previous value of a partial write) whose producer in B has no partner in A
    refers to ``NO_PARTNER`` events back, which matches no input of A.
    """
    b_of_a = alignment.b_of_a
    ca, cb = a.columns, b.columns
    paired = b_of_a >= 0
    source = np.where(paired, b_of_a, 0)
    a_of_b = np.full(max(len(b), 1), -1, dtype=np.int64)
    a_of_b[b_of_a[paired]] = np.flatnonzero(paired)

    # Strings: A's table, then those only B has; B's ids renumbered into it.
    extra = np.flatnonzero(alignment.ids_b_to_a < 0)
    renumber = alignment.ids_b_to_a.copy()
    renumber[extra] = len(a.strings) + np.arange(len(extra))
    strings = a.strings + [b.strings[k] for k in extra.tolist()]

    columns = {}
    for name in ("op", "module", "location", "args"):
        ids = renumber[_take(cb[name], source)] if len(renumber) else ca[name]
        columns[name] = np.where(paired, ids, ca[name]).astype(np.uint32)
    for name in ("phase", "step", "n_in", "n_out", "flags"):
        columns[name] = np.where(paired, _take(cb[name], source), ca[name]).astype(ca[name].dtype)

    # Rows: per row of A, the row of B it is paired with (-1 for rows of unpaired events).
    in_rows_b = _partner_rows(a.in_event, a.in_start, b.in_start, b_of_a)
    out_rows_b = _partner_rows(a.out_event, a.out_start, b.out_start, b_of_a)

    def gather(name: str, rows_b: np.ndarray) -> np.ndarray:
        mine = ca[name]
        if not len(mine):
            return mine.copy()
        taken = np.where(rows_b >= 0, _take(cb[name], np.maximum(rows_b, 0)), mine)
        return taken.astype(mine.dtype)

    for name in ("in_slot", "out_kind", "out_fp", "out_sum", "out_absmax", "out_numel"):
        columns[name] = gather(name, in_rows_b if name == "in_slot" else out_rows_b)
    columns["out_prev_slot"] = gather("out_prev_slot", out_rows_b)
    columns["in_back"] = _backs(ca["in_back"], cb["in_back"], in_rows_b, a.in_event, b_of_a, a_of_b)
    columns["out_prev_back"] = _backs(
        ca["out_prev_back"], cb["out_prev_back"], out_rows_b, a.out_event, b_of_a, a_of_b
    )
    return Trace(
        path=b.path,
        header=b.header,
        footer=b.footer,
        strings=strings,
        columns=columns,
        complete=b.complete,
    )


def _take(column: np.ndarray, index: np.ndarray) -> np.ndarray:
    return column[index] if len(column) else np.zeros(len(index), dtype=column.dtype)


def _partner_rows(row_event, start_a, start_b, b_of_a) -> np.ndarray:
    """Per row of A (``row_event``: its event), the same row of the partner event in B, or -1."""
    if not len(row_event):
        return np.zeros(0, dtype=np.int64)
    partner = b_of_a[row_event]
    offset = np.arange(len(row_event), dtype=np.int64) - start_a[row_event]
    return np.where(partner >= 0, start_b[np.maximum(partner, 0)] + offset, -1)


def _backs(back_a, back_b_column, rows_b, row_event, b_of_a, a_of_b) -> np.ndarray:
    """Run B's "events back" references of the paired rows, renumbered to count in A's events
    (``row_event``: per row of A, its event)."""
    result = back_a.astype(np.uint32).copy()
    rows = np.flatnonzero(rows_b >= 0)
    if not len(rows):
        return result
    event_a = row_event[rows]
    back_b = back_b_column[rows_b[rows]].astype(np.int64)
    producer_b = b_of_a[event_a] - back_b
    producer_a = a_of_b[np.maximum(producer_b, 0)]
    renumbered = np.where(producer_a >= 0, event_a - producer_a, -1)
    value = np.where(back_b == 0, 0, np.where(renumbered > 0, renumbered, -1))
    result[rows] = np.where(value < 0, NO_PARTNER, value).astype(np.uint32)
    return result
