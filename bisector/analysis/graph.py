"""Which paired events differ, which of them are sources, and how far each source spread.

Equality is decided per *value*: an output row of an event is equal in both runs when its
fingerprints are. For an in-place write into part of a storage, the storage's value after the
write is equal only if the value before it was equal too (the rest of the storage came from
there). An input is equal when, in both runs, it refers to the same producer event and output,
and that value is equal. A *source* is an event whose inputs and non-tensor arguments are equal
and whose outputs differ. The dataflow graph (networkx) of differing events gives each source's
reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from bisector.trace import OUT_HASHED, OUT_NODATA, OUT_PARTIAL, Trace

# Beyond this many sources, reach is computed only for the first ones (it is only displayed
# for a few, and each computation walks the graph).
_MAX_REACH = 50


@dataclass
class Equality:
    """Per-event comparison of the paired prefix of two traces.

    Attributes:
        out_differs: event has an output whose fingerprint differs.
        inputs_equal: every tensor input of the event holds an equal value in both runs.
        args_equal: the non-tensor arguments are equal.
        row_differs: per output row (trace A's row order), the fingerprint differs.
        state_equal: per output row, the value it leaves behind is equal (partial writes
            included).
        rewired: the event reads a tensor made by a different producer in the two runs, while
            every input whose producer matches is equal (the dataflow itself changed).
        producer: per input row, the producing event's index (-1: untracked).
        consumer: per input row, the consuming event's index.
    """

    out_differs: np.ndarray
    inputs_equal: np.ndarray
    args_equal: np.ndarray
    rewired: np.ndarray
    row_differs: np.ndarray
    state_equal: np.ndarray
    producer: np.ndarray
    consumer: np.ndarray


def compare_events(a: Trace, b: Trace, paired: int, ids_b_to_a: np.ndarray) -> Equality:
    """Compare events ``0..paired-1`` of two aligned traces."""
    ca, cb = a.columns, b.columns
    rows = int(a.out_start[paired])
    kind_a, kind_b = ca["out_kind"][:rows], cb["out_kind"][:rows]
    hashed = ((kind_a & OUT_HASHED) > 0) & ((kind_b & OUT_HASHED) > 0)
    nodata = ((kind_a | kind_b) & OUT_NODATA) > 0
    row_differs = hashed & (ca["out_fp"][:rows] != cb["out_fp"][:rows])
    keep = np.uint8(0xFF ^ OUT_PARTIAL)
    row_differs |= ~nodata & ((kind_a & keep) != (kind_b & keep))
    state_equal = ~row_differs

    row_event = np.repeat(np.arange(paired, dtype=np.int64), ca["n_out"][:paired].astype(np.int64))
    partial = np.flatnonzero(((kind_a | kind_b) & OUT_PARTIAL) > 0)
    if len(partial):
        back_a = ca["out_prev_back"][:rows].astype(np.int64)
        back_b = cb["out_prev_back"][:rows].astype(np.int64)
        slot_a = ca["out_prev_slot"][:rows].astype(np.int64)
        slot_b = cb["out_prev_slot"][:rows].astype(np.int64)
        out_start = a.out_start
        for row in partial:  # in order: a previous value is always decided first
            if back_a[row] != back_b[row] or slot_a[row] != slot_b[row]:
                state_equal[row] = False
            elif back_a[row]:
                previous = out_start[row_event[row] - back_a[row]] + slot_a[row]
                state_equal[row] &= state_equal[previous]

    in_rows = int(a.in_start[paired])
    consumer = np.repeat(np.arange(paired, dtype=np.int64), ca["n_in"][:paired].astype(np.int64))
    back_a = ca["in_back"][:in_rows].astype(np.int64)
    back_b = cb["in_back"][:in_rows].astype(np.int64)
    same_ref = (back_a == back_b) & (ca["in_slot"][:in_rows] == cb["in_slot"][:in_rows])
    tracked = back_a > 0
    producer = np.where(tracked, consumer - back_a, -1)
    value_rows = a.out_start[np.maximum(producer, 0)] + ca["in_slot"][:in_rows].astype(np.int64)
    value_equal = np.where(tracked, state_equal[np.minimum(value_rows, max(rows - 1, 0))], True)
    input_ok = same_ref & value_equal
    bad_inputs = np.bincount(consumer[~input_ok], minlength=paired)[:paired]
    inputs_equal = bad_inputs == 0
    moved = np.bincount(consumer[~same_ref], minlength=paired)[:paired] > 0
    unequal_matched = np.bincount(consumer[same_ref & ~value_equal], minlength=paired)[:paired]
    rewired = moved & (unequal_matched == 0)

    args_equal = ca["args"][:paired].astype(np.int64) == ids_b_to_a[cb["args"][:paired]]
    out_differs = np.bincount(row_event[row_differs], minlength=paired)[:paired] > 0
    return Equality(
        out_differs, inputs_equal, args_equal, rewired, row_differs, state_equal, producer, consumer
    )


def source_events(eq: Equality) -> np.ndarray:
    """Indices of events whose inputs are equal (or rewired) and whose outputs differ, in order."""
    return np.flatnonzero(eq.out_differs & (eq.inputs_equal | eq.rewired))


def classify(op: str, args_equal: bool, random: bool, rewired: bool = False) -> str:
    """The kind of a source from its op name, whether its arguments are equal, whether the call
    drew random numbers, and whether it reads tensors from other producers in the two runs."""
    if rewired:
        return "structure"
    if op.startswith("leaf."):
        return "input"
    if not args_equal:
        return "argument"
    if random:
        return "rng"
    return "kernel"


def dataflow_graph(eq: Equality) -> nx.DiGraph:
    """The dataflow graph restricted to differing events: an edge producer -> consumer."""
    graph = nx.DiGraph()
    differs = eq.out_differs
    graph.add_nodes_from(np.flatnonzero(differs).tolist())
    tracked = eq.producer >= 0
    producer = eq.producer[tracked]
    consumer = eq.consumer[tracked]
    both = differs[producer] & differs[consumer]
    edges = set(zip(producer[both].tolist(), consumer[both].tolist(), strict=True))
    graph.add_edges_from(edges)
    return graph


def reach(graph: nx.DiGraph, sources: list[int]) -> dict[int, int]:
    """Number of differing events downstream of each source (for the first ``_MAX_REACH``)."""
    return {s: len(nx.descendants(graph, s)) for s in sources[:_MAX_REACH] if s in graph}


def unexplained(graph: nx.DiGraph, sources: list[int]) -> int:
    """Differing events that no source reaches (their cause was not recorded)."""
    roots = [s for s in sources if s in graph]
    if not roots:
        return graph.number_of_nodes()
    hub = -1  # a virtual node feeding every source: one walk covers them all
    graph.add_edges_from((hub, s) for s in roots)
    try:
        covered = nx.descendants(graph, hub)
    finally:
        graph.remove_node(hub)
    return graph.number_of_nodes() - len(covered)
