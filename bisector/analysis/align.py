"""Pair the events of two traces, and find where their op streams stop matching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bisector.trace import Trace


@dataclass
class Alignment:
    """Events ``0..paired-1`` of both traces are paired one to one.

    Attributes:
        paired: number of paired events (a prefix of both streams).
        break_at: index of the first event where the streams stop matching (different op or
            different number of inputs or outputs), or None if one stream is a prefix of the
            other and both have the same length.
        reason: why the streams stop matching, in words.
        ids_b_to_a: maps string ids of trace B to those of trace A (-1 for strings A lacks).
    """

    paired: int
    break_at: int | None
    reason: str
    ids_b_to_a: np.ndarray


def string_map(a: Trace, b: Trace) -> np.ndarray:
    """For each string id of ``b``, the id of the same string in ``a`` (or a unique negative)."""
    index = {s: i for i, s in enumerate(a.strings)}
    return np.array(
        [index.get(s, -1 - k) for k, s in enumerate(b.strings)], dtype=np.int64
    ).reshape(-1)


def align(a: Trace, b: Trace) -> Alignment:
    """Pair the longest common prefix of two op streams.

    Two events match when they call the same op with as many tensor inputs and outputs.
    """
    ids = string_map(a, b)
    n = min(len(a), len(b))
    ca, cb = a.columns, b.columns
    same = ca["op"][:n].astype(np.int64) == ids[cb["op"][:n]] if n else np.zeros(0, bool)
    same &= ca["n_in"][:n] == cb["n_in"][:n]
    same &= ca["n_out"][:n] == cb["n_out"][:n]
    mismatches = np.flatnonzero(~same)
    if len(mismatches):
        k = int(mismatches[0])
        op_a, op_b = a.string("op", k), b.string("op", k)
        if op_a != op_b:
            reason = f"run A calls {op_a} where run B calls {op_b}"
        else:
            reason = f"{op_a} gets different numbers of tensors in the two runs"
        return Alignment(k, k, reason, ids)
    if len(a) != len(b):
        longer, shorter = ("A", "B") if len(a) > len(b) else ("B", "A")
        reason = (
            f"run {shorter} ends after {n} events; run {longer} records {abs(len(a) - len(b))} more"
        )
        return Alignment(n, n, reason, ids)
    return Alignment(n, None, "", ids)
