"""Which paired events differ, which of them are sources, and how far each source spread.

Equality is decided per *value*: an output row of an event is equal in both runs when its
fingerprints are. For an in-place write into part of a storage, the storage's value after the
write is equal only if the value before it was equal too (the rest of the storage came from
there). An input is equal when, in both runs, it refers to the same producer event and output,
and that value is equal. A *source* is an event whose inputs and non-tensor arguments are equal
and whose outputs differ. The dataflow among differing events gives each source's reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bisector.analysis.align import NO_PARTNER
from bisector.schema import is_leaf
from bisector.trace import OUT_HASHED, OUT_NODATA, OUT_PARTIAL, OUT_UNHASHABLE, Trace

# Beyond this many sources, reach is computed only for the first ones (it is only displayed
# for a few); each has a bit of a uint64 in the sweep that computes them all at once.
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
        paired: per event, whether it has a partner in the other run (unpaired events are
            never sources nor differences).
        orphaned: per event, it reads a value made by an event that has no partner (in
            either run): it lies just after a break of the op streams.
    """

    out_differs: np.ndarray
    inputs_equal: np.ndarray
    args_equal: np.ndarray
    rewired: np.ndarray
    row_differs: np.ndarray
    state_equal: np.ndarray
    producer: np.ndarray
    consumer: np.ndarray
    paired: np.ndarray
    orphaned: np.ndarray


def compare_events(a: Trace, b: Trace, paired: np.ndarray, ids_b_to_a: np.ndarray) -> Equality:
    """Compare two aligned traces event by event.

    Args:
        a: run A.
        b: run B, event k paired with event k of A (``align.project`` makes one).
        paired: per event of A, True where it has a partner (the others, copies of A's events
            in ``b``, compare equal by construction).
        ids_b_to_a: string ids of ``b`` in A's numbering.
    """
    n = len(a)
    ca, cb = a.columns, b.columns
    kind_a, kind_b = ca["out_kind"], cb["out_kind"]
    hashed = ((kind_a & OUT_HASHED) > 0) & ((kind_b & OUT_HASHED) > 0)
    nodata = ((kind_a | kind_b) & OUT_NODATA) > 0
    row_differs = hashed & (ca["out_fp"] != cb["out_fp"])
    keep = np.uint8(0xFF ^ OUT_PARTIAL)
    row_differs |= ~nodata & ((kind_a & keep) != (kind_b & keep))
    state_equal = ~row_differs

    row_event = a.out_event
    partial = np.flatnonzero(((kind_a | kind_b) & OUT_PARTIAL) > 0)
    if len(partial):
        back_a = ca["out_prev_back"].astype(np.int64)
        back_b = cb["out_prev_back"].astype(np.int64)
        slot_a = ca["out_prev_slot"].astype(np.int64)
        slot_b = cb["out_prev_slot"].astype(np.int64)
        out_start = a.out_start
        for row in partial:  # in order: a previous value is always decided first
            if back_a[row] != back_b[row] or slot_a[row] != slot_b[row]:
                state_equal[row] = False
            elif back_a[row]:
                previous = out_start[row_event[row] - back_a[row]] + slot_a[row]
                state_equal[row] &= state_equal[previous]

    consumer = a.in_event
    back_a = ca["in_back"].astype(np.int64)
    back_b = cb["in_back"].astype(np.int64)
    same_ref = (back_a == back_b) & (ca["in_slot"] == cb["in_slot"])
    tracked = back_a > 0
    producer = np.where(tracked, consumer - back_a, -1)
    value_rows = a.out_start[np.maximum(producer, 0)] + ca["in_slot"].astype(np.int64)
    moved = np.bincount(consumer[~same_ref], minlength=n) > 0

    def decide_inputs() -> tuple[np.ndarray, np.ndarray]:
        """(inputs_equal, rewired) per event, from ``state_equal`` as it stands."""
        value_equal = np.ones(len(consumer), dtype=bool)  # an untracked input: nothing to compare
        value_equal[tracked] = state_equal[value_rows[tracked]]
        inputs_equal = np.bincount(consumer[~(same_ref & value_equal)], minlength=n) == 0
        unequal_matched = np.bincount(consumer[same_ref & ~value_equal], minlength=n)
        return inputs_equal, moved & (unequal_matched == 0)

    inputs_equal, rewired = decide_inputs()

    args_equal = ca["args"].astype(np.int64) == ids_b_to_a[cb["args"]]
    # A value neither run could fingerprint (a quantized or compressed-sparse tensor, a
    # subclass) is taken to differ where the op that made it read a differing value or
    # argument: a difference carried through it is not taken for a new one where it is read.
    # Its readers are decided again, in as many rounds as such values chain.
    unknown = np.flatnonzero((((kind_a & kind_b) & OUT_UNHASHABLE) > 0) & ~row_differs)
    made_by = row_event[unknown]
    for _ in range(len(unknown)):
        carried = ~(inputs_equal[made_by] & args_equal[made_by])
        if not carried.any() or row_differs[unknown[carried]].all():
            break
        row_differs[unknown[carried]] = True
        state_equal[unknown[carried]] = False
        inputs_equal, rewired = decide_inputs()
    out_differs = np.bincount(row_event[row_differs], minlength=n) > 0
    from_unpaired = tracked & ~paired[np.maximum(producer, 0)]
    from_unpaired |= back_b == NO_PARTNER
    orphaned = np.bincount(consumer[from_unpaired], minlength=n) > 0
    return Equality(
        out_differs,
        inputs_equal,
        args_equal,
        rewired,
        row_differs,
        state_equal,
        producer,
        consumer,
        paired,
        orphaned,
    )


def source_events(eq: Equality) -> np.ndarray:
    """Indices of events whose inputs are equal (or rewired) and whose outputs differ, in order.
    An event that reads a value of an unpaired event is not one: the break explains it."""
    return np.flatnonzero(eq.out_differs & (eq.inputs_equal | eq.rewired) & ~eq.orphaned)


def classify(op: str, args_equal: bool, random: bool, rewired: bool = False) -> str:
    """The kind of a source from its op name, whether its arguments are equal, whether the call
    drew random numbers, and whether it reads tensors from other producers in the two runs."""
    if rewired:
        return "structure"
    if is_leaf(op):
        return "input"
    if not args_equal:
        return "argument"
    if random:
        return "rng"
    return "kernel"


@dataclass
class Dataflow:
    """The dataflow among differing events: an edge from each producer to each consumer, where
    both differ. A producer always comes before its consumers, so one sweep in event order
    follows every path.

    Attributes:
        differs: per paired event, whether it differs (is a node).
        producers: the producer of each edge, in the order of their consumers.
        consumers: the consumer of each edge, in order.
    """

    differs: np.ndarray
    producers: np.ndarray
    consumers: np.ndarray

    def __contains__(self, event: int) -> bool:
        return 0 <= event < len(self.differs) and bool(self.differs[event])

    def number_of_nodes(self) -> int:
        return int(np.count_nonzero(self.differs))

    def to_networkx(self):
        """The same graph as a networkx DiGraph (nodes: differing event indices), to explore
        it with networkx's algorithms; the analysis itself uses the arrays (ten times faster
        at 10^6 events)."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(np.flatnonzero(self.differs).tolist())
        graph.add_edges_from(zip(self.producers.tolist(), self.consumers.tolist(), strict=True))
        return graph


def dataflow_graph(eq: Equality) -> Dataflow:
    """The dataflow restricted to differing events: an edge producer -> consumer."""
    differs = eq.out_differs
    tracked = eq.producer >= 0
    producer = eq.producer[tracked]
    consumer = eq.consumer[tracked]
    both = differs[producer] & differs[consumer]
    order = np.argsort(consumer[both], kind="stable")
    return Dataflow(differs, producer[both][order], consumer[both][order])


def _sweep(graph: Dataflow, seeds: list[tuple[int, int]]) -> np.ndarray:
    """Per differing event (in order), the OR of the bits of the seeds that reach it, its own
    included: one pass over the edges in consumer order, after which every producer is final.

    A plain loop: reachability is sequential in event order, and each edge costs one OR of two
    small ints (a networkx graph took ten times longer to build than this takes to run).
    """
    masks = [0] * len(graph.differs)
    for event, bit in seeds:
        masks[event] |= bit
    for producer, consumer in zip(graph.producers.tolist(), graph.consumers.tolist(), strict=True):
        if masks[producer]:
            masks[consumer] |= masks[producer]
    nodes = np.flatnonzero(graph.differs).tolist()
    return np.array([masks[event] for event in nodes], dtype=np.uint64)


def reach(graph: Dataflow, sources: list[int]) -> dict[int, int]:
    """Number of differing events downstream of each source (for the first ``_MAX_REACH``)."""
    roots = [s for s in sources[:_MAX_REACH] if s in graph]
    counts = reach_groups(graph, [[s] for s in roots])
    return {s: count - 1 for s, count in zip(roots, counts, strict=True)}


def reach_groups(graph: Dataflow, groups: list[list[int]]) -> list[int]:
    """Per group of events, the number of differing events reached from any of them (its own
    differing members included), for the first ``_MAX_REACH`` groups."""
    groups = groups[:_MAX_REACH]
    seeds = [(e, 1 << bit) for bit, group in enumerate(groups) for e in group if e in graph]
    masks = _sweep(graph, seeds)
    return [int(np.count_nonzero(masks & np.uint64(1 << bit))) for bit in range(len(groups))]


def unexplained(graph: Dataflow, sources: list[int]) -> int:
    """Differing events that no source reaches (their cause was not recorded)."""
    roots = [s for s in sources if s in graph]
    if not roots:
        return graph.number_of_nodes()
    return int(np.count_nonzero(_sweep(graph, [(s, 1) for s in roots]) == 0))
