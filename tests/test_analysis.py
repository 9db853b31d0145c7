"""Alignment and source finding on hand-built event streams."""

from __future__ import annotations

import pytest
from streams import Ev, make_trace

from bisector.analysis import compare
from bisector.errors import MismatchError
from bisector.trace import OUT_HASHED, OUT_NODATA, OUT_PARTIAL, OUT_UNHASHABLE


def _chain(kernel_fp: int, param_fp: int = 7, lr: str = "0.1") -> list[Ev]:
    """leaf weight -> mm (kernel) -> relu -> sum, then an optimizer update of the weight."""
    return [
        Ev("leaf.parameter", [], [param_fp], args="fc.weight", module="fc"),
        Ev("leaf.tensor", [], [11], args="T float32[4, 4]"),
        Ev("aten.mm.default", [(1, 0), (0, 0)], [kernel_fp], module="fc"),
        Ev("aten.relu.default", [(2, 0)], [kernel_fp * 3]),
        Ev("aten.sum.default", [(3, 0)], [kernel_fp * 5]),
        Ev("aten.add_.Tensor", [(0, 0), (4, 0)], [kernel_fp * 7], args=lr, phase="optimizer"),
    ]


def test_identical_streams_are_reproducible():
    report = compare(make_trace(_chain(100)), make_trace(_chain(100)))
    assert report.reproducible
    assert report.first_divergence is None and report.sources == []
    assert report.compared_events == 6 and report.differing_events == 0


def test_kernel_source_is_the_first_op_with_equal_inputs_and_different_outputs():
    report = compare(make_trace(_chain(100)), make_trace(_chain(101)))
    assert not report.reproducible
    first = report.first_divergence
    assert (first.kind, first.op, first.module, first.event) == (
        "kernel",
        "aten.mm.default",
        "fc",
        2,
    )
    assert len(report.sources) == 1, "downstream events must not be sources"
    assert report.differing_events == 4
    assert first.spread == 3
    assert first.location == "train.py:10"


def test_input_leaf_source():
    report = compare(make_trace(_chain(100, param_fp=7)), make_trace(_chain(100, param_fp=8)))
    first = report.first_divergence
    assert (first.kind, first.op, first.event) == ("input", "leaf.parameter", 0)


def test_argument_source():
    a, b = _chain(100), _chain(100)
    b[5].outputs = [999]
    b[5].args = "0.1000001"
    report = compare(make_trace(a), make_trace(b))
    first = report.first_divergence
    assert (first.kind, first.op, first.phase) == ("argument", "aten.add_.Tensor", "optimizer")
    assert first.args == ["0.1", "0.1000001"]


def test_argument_that_changes_nothing_is_not_a_source():
    a, b = _chain(100), _chain(100)
    b[3].args = "inplace=False"
    assert compare(make_trace(a), make_trace(b)).reproducible


def test_rng_kind_when_the_call_drew_random_numbers():
    a = [
        Ev("aten.empty.memory_format", [], [(0, OUT_NODATA, None)]),
        Ev("aten.bernoulli_.float", [(0, 0)], [5], args="0.5", random=True),
    ]
    b = [
        Ev("aten.empty.memory_format", [], [(1, OUT_NODATA, None)]),
        Ev("aten.bernoulli_.float", [(0, 0)], [6], args="0.5", random=True),
    ]
    report = compare(make_trace(a), make_trace(b))
    assert report.first_divergence.kind == "rng"
    assert report.first_divergence.event == 1, "uninitialised memory is never a source"
    a[1].random = b[1].random = False  # a seeded-tagged op called with dropout_p=0, say
    assert compare(make_trace(a), make_trace(b)).first_divergence.kind == "kernel"


def test_independent_sources_are_all_listed_in_order():
    a, b = _chain(100), _chain(101)
    extra = [Ev("leaf.tensor", [], [50], step=1), Ev("aten.cumsum.default", [(6, 0)], [60], step=1)]
    extra_b = [
        Ev("leaf.tensor", [], [50], step=1),
        Ev("aten.cumsum.default", [(6, 0)], [61], step=1),
    ]
    report = compare(make_trace(a + extra), make_trace(b + extra_b))
    assert [s.event for s in report.sources] == [2, 7]
    assert report.sources[1].step == 1


def test_partial_write_keeps_earlier_differences():
    """A write into half a buffer that was already different leaves it different."""

    def stream(first_half: int) -> list[Ev]:
        return [
            Ev("aten.zeros.default", [], [1]),
            Ev(
                "aten.copy_.default",
                [(0, 0), (-1, 0)],
                [(first_half, OUT_HASHED | OUT_PARTIAL, (0, 0))],
            ),
            Ev("aten.copy_.default", [(1, 0), (-1, 0)], [(9, OUT_HASHED | OUT_PARTIAL, (1, 0))]),
            Ev("aten.sum.default", [(2, 0)], [first_half * 2]),
        ]

    report = compare(make_trace(stream(3)), make_trace(stream(4)))
    assert [s.event for s in report.sources] == [1], "the sum reads a value that already differed"


def _through_a_quantized_value(kernel_fp: int, leaf_fp: int = 11) -> list[Ev]:
    """leaf -> index_put (kernel) -> quantize (no fingerprint) -> dequantize -> sum."""
    return [
        Ev("leaf.tensor", [], [leaf_fp]),
        Ev("aten.index_put.default", [(0, 0)], [kernel_fp]),
        Ev("aten.quantize_per_tensor.default", [(1, 0)], [(0, OUT_UNHASHABLE, None)]),
        Ev("aten.dequantize.self", [(2, 0)], [kernel_fp * 3]),
        Ev("aten.sum.default", [(3, 0)], [kernel_fp * 5]),
    ]


def test_a_difference_carried_through_a_value_that_cannot_be_compared_is_not_a_new_one():
    """A quantized tensor has no plain bits: its reader (dequantize) sees a value made from a
    differing one, and is no source: the kernel upstream is the only one."""
    report = compare(
        make_trace(_through_a_quantized_value(100)), make_trace(_through_a_quantized_value(101))
    )
    assert [s.event for s in report.sources] == [1], report.sources
    assert report.differing_events == 4  # (the quantized value, from a differing one, counts)
    # three values that cannot be compared in a row carry it as far
    chained = [
        *_through_a_quantized_value(100)[:3],
        Ev("aten.clone.default", [(2, 0)], [(0, OUT_UNHASHABLE, None)]),
        Ev("aten.clone.default", [(3, 0)], [(0, OUT_UNHASHABLE, None)]),
        Ev("aten.dequantize.self", [(4, 0)], [300]),
    ]
    other = [*chained[:1], Ev("aten.index_put.default", [(0, 0)], [101]), *chained[2:5]]
    other.append(Ev("aten.dequantize.self", [(4, 0)], [303]))
    assert [s.event for s in compare(make_trace(chained), make_trace(other)).sources] == [1]


def test_a_value_that_cannot_be_compared_made_from_equal_ones_is_taken_as_equal():
    """Where everything the op that made it read is equal, its reader is the first op seen to
    differ: the source (the quantize itself may be the cause; nothing shows it)."""
    a, b = _through_a_quantized_value(100), _through_a_quantized_value(100)
    b[3].outputs, b[4].outputs = [301], [501]
    assert [s.event for s in compare(make_trace(a), make_trace(b)).sources] == [3]


def test_structure_break_is_a_source_and_never_crashes():
    a = _chain(100)
    b = _chain(100)[:3] + [Ev("aten.gelu.default", [(2, 0)], [300])] + _chain(100)[4:]
    report = compare(make_trace(a), make_trace(b))
    assert not report.reproducible
    assert report.structure["event"] == 3 and report.structure["event_b"] == 3
    assert report.structure["reason"].startswith(
        "run A calls aten.relu.default where run B calls aten.gelu.default; they match again "
        "from event 4 of run A and 4 of run B"
    )
    assert report.structure["resumed_at"] == 4 and len(report.structure["breaks"]) == 1
    assert report.first_divergence.kind == "structure"
    assert report.compared_events == 5, "the tail after the break is paired again"
    assert any("may be misaligned" in note for note in report.notes)


def _steps(
    n: int, kernel_fp=lambda step: 100 + step, log_at=None, detour_at=None, skip=None
) -> list[Ev]:
    """n training steps of a 6-event chain. ``log_at``: that step also reads the mm's output
    for logging (an extra op nothing else reads); ``detour_at``: that step sends the mm's
    output through an extra op (tanh) before the relu, which changes everything after it;
    ``skip``: that step is not run (a batch skipped)."""
    events: list[Ev] = [Ev("leaf.parameter", [], [7], args="fc.weight", module="fc")]
    weight, shift = 0, 0
    for step in range(n):
        if step == skip:
            continue
        fp = kernel_fp(step) + shift
        start = len(events)
        events.append(Ev("leaf.tensor", [], [11 + step], args="T float32[4, 4]", step=step))
        events.append(
            Ev("aten.mm.default", [(start, 0), (weight, 0)], [fp], module="fc", step=step)
        )
        last = start + 1
        if step == log_at:
            events.append(Ev("aten._local_scalar_dense.default", [(last, 0)], [], step=step))
        if step == detour_at:
            events.append(Ev("aten.tanh.default", [(last, 0)], [fp + 1], step=step))
            last, shift = len(events) - 1, 5000
            fp += shift
        events.append(Ev("aten.relu.default", [(last, 0)], [fp * 3], step=step))
        events.append(Ev("aten.sum.default", [(len(events) - 1, 0)], [fp * 5], step=step))
        events.append(Ev("aten.mul.Tensor", [(len(events) - 1, 0)], [fp * 9], step=step))
        events.append(
            Ev(
                "aten.add_.Tensor",
                [(weight, 0), (len(events) - 1, 0)],
                [fp * 7],
                phase="optimizer",
                step=step,
            )
        )
        weight = len(events) - 1
    return events


def test_a_kernel_source_after_a_logging_branch_is_found():
    """Run A logs at step 1 (an extra op that changes nothing); run B's mm differs at step 3.
    The streams pair again after the extra op, so the kernel source is found and leads."""
    a = _steps(5, log_at=1)
    b = _steps(5, kernel_fp=lambda step: 100 + step + (1000 if step == 3 else 0))
    report = compare(make_trace(a), make_trace(b))
    kinds = [(s.kind, s.op, s.step) for s in report.sources]
    assert kinds == [
        ("kernel", "aten.mm.default", 3),
        ("structure", "aten._local_scalar_dense.default", 1),
    ]
    assert report.structure["resumed_at"] == report.structure["event"] + 1
    assert report.compared_events == len(b)
    assert report.sources[1].spread == 0
    assert any("read by nothing that differs later" in note for note in report.notes)


def test_a_branch_that_changes_the_values_is_the_headline():
    """Run A sends step 1's mm output through tanh: what differs after it comes from the break,
    which leads; events that read the tanh's output are not sources of their own."""
    report = compare(make_trace(_steps(4, detour_at=1)), make_trace(_steps(4)))
    first = report.first_divergence
    assert (first.kind, first.op, first.step) == ("structure", "aten.tanh.default", 1)
    assert [s.kind for s in report.sources] == ["structure"]
    assert first.spread == report.differing_events > 0


def test_a_source_after_a_break_is_missed_by_nothing_when_a_run_stops_early():
    """Early stopping: run B stops after 3 of 5 steps. A source in step 2 is still the headline."""
    a = _steps(5, kernel_fp=lambda step: 100 + step + (1000 if step == 2 else 0))
    b = _steps(3)
    report = compare(make_trace(a), make_trace(b))
    assert [(s.kind, s.step) for s in report.sources] == [("kernel", 2), ("structure", 3)]
    assert report.first_divergence.kind == "kernel"
    assert "run B ends after" in report.sources[1].detail
    assert any("not compared" in note for note in report.notes)


def test_a_skipped_batch_reads_as_a_different_batch_then_a_shorter_run():
    """Run B skips the batch of step 2. Its steps look alike op by op, so B's step 3 pairs with
    A's step 2: the report says the data differ from there and that run B ends early."""
    a = _steps(6)
    b = _steps(6, skip=2)
    report = compare(make_trace(a), make_trace(b))
    first = report.first_divergence
    assert (first.kind, first.op, first.step) == ("input", "leaf.tensor", 2)
    assert report.sources[-1].kind == "structure"
    assert "run B ends after" in report.structure["reason"]


def test_alignment_pairs_in_order_and_only_matching_events():
    """Random edits of a long stream: every pair matches and keeps the order of both runs, and
    the events no edit touched are all paired."""
    import numpy as np

    from bisector.analysis.align import _tokens, align

    rng = np.random.default_rng(0)
    ops = [f"aten.op{k}.default" for k in range(6)]
    base = [Ev(ops[int(k)], [], [1]) for k in rng.integers(0, 6, 3000)]
    a, b = list(base), list(base)
    for at in sorted(rng.choice(2900, 12, replace=False).tolist(), reverse=True):
        if at % 3 == 0:
            del b[at : at + 2]
        elif at % 3 == 1:
            b.insert(at, Ev("aten.extra.default", [], [1]))
        else:
            a.insert(at, Ev("aten.other.default", [], [1], args="x"))
    ta, tb = make_trace(a), make_trace(b)
    alignment = align(ta, tb)
    pairs = np.flatnonzero(alignment.b_of_a >= 0)
    partners = alignment.b_of_a[pairs]
    assert np.all(np.diff(partners) > 0)
    tokens_a, tokens_b = _tokens(ta, None), _tokens(tb, alignment.ids_b_to_a)
    assert np.array_equal(tokens_a[pairs], tokens_b[partners])
    assert alignment.paired >= len(base) - 12 * 2 - 12 * 8
    assert 1 <= len(alignment.breaks) <= 12


def test_inputs_from_different_producers_are_not_equal():
    a = _chain(100)
    b = _chain(100)
    b[3].inputs = [(1, 0)]  # relu reads the data instead of the mm output in run B
    b[3].outputs = [77]
    report = compare(make_trace(a), make_trace(b))
    first = report.first_divergence
    assert (first.kind, first.event) == ("structure", 3)
    assert "different op" in first.detail


def test_empty_traces_are_a_clear_error():
    with pytest.raises(MismatchError, match="neither trace"):
        compare(make_trace([]), make_trace([]))


def test_traces_of_different_scripts_sharing_nothing():
    a = make_trace([Ev("aten.mm.default", [], [1])], header={"argv": ["train.py"]})
    b = make_trace([Ev("aten.conv2d.default", [], [1])], header={"argv": ["other.py"]})
    with pytest.raises(MismatchError, match="different scripts"):
        compare(a, b)


def test_report_json_contract():
    import json

    report = compare(make_trace(_chain(100)), make_trace(_chain(101)))
    data = json.loads(report.to_json())
    assert data["schema"] == 1 and data["reproducible"] is False
    assert set(data) >= {"schema", "reproducible", "first_divergence", "sources", "runs"}
    source_keys = {"kind", "op", "module", "phase", "step", "rank", "location", "max_abs_diff"}
    assert source_keys <= set(data["first_divergence"])
    assert all(source_keys <= set(s) for s in data["sources"])
    assert data["first_divergence"]["phase"] in ("forward", "backward", "optimizer", "other")
    from bisector.report import Report

    assert Report.from_dict(data).to_dict() == data


def test_traces_with_different_fingerprint_functions_are_refused():
    a = make_trace(_chain(100), header={"fingerprint": "wsum64-v1"})
    b = make_trace(_chain(100), header={"fingerprint": "other-v9"})
    with pytest.raises(MismatchError, match="different fingerprint functions"):
        compare(a, b)


def test_a_first_source_that_spreads_nowhere_is_not_the_headline():
    from bisector.analysis import lead_with_headline
    from bisector.report import Source

    def source(op, event, spread):
        return Source("kernel", op, "m", "forward", 0, 0, "", None, event=event, spread=spread)

    dead, real, later = source("aten.uniform_.default", 1, 0), source("leaf.tensor", 5, 38), None
    ordered, note = lead_with_headline([dead, real])
    assert [s.op for s in ordered] == ["leaf.tensor", "aten.uniform_.default"]
    assert "aten.uniform_.default" in note and "spreads" in note
    assert lead_with_headline([real, dead]) == ([real, dead], None)
    only_dead = [dead, source("aten.mm.default", 9, 0)]
    assert lead_with_headline(only_dead) == (only_dead, None)
    later = source("aten.mm.default", 9, None)  # reach not computed: may spread
    assert lead_with_headline([dead, later])[0][0] is later


def test_uninitialised_memory_read_as_data_is_reported_as_such():
    """torch.empty read by a sum: not a kernel source, and the line of the empty is named."""
    a = [
        Ev("aten.empty.memory_format", [], [(0, OUT_NODATA, None)], location="/work/t.py:3"),
        Ev("aten.sum.default", [(0, 0)], [5]),
        Ev("aten.fill_.Scalar", [(0, 0)], [7], args="1.0"),  # overwrites: not a read
    ]
    b = [
        Ev("aten.empty.memory_format", [], [(1, OUT_NODATA, None)], location="/work/t.py:3"),
        Ev("aten.sum.default", [(0, 0)], [6]),
        Ev("aten.fill_.Scalar", [(0, 0)], [8], args="1.0"),
    ]
    report = compare(make_trace(a), make_trace(b))
    first = report.first_divergence
    assert (first.kind, first.op) == ("uninitialized", "aten.sum.default")
    assert "aten.empty.memory_format at" in first.detail and "t.py:3" in first.detail
    # an in-place op writing the whole empty tensor does not read it: its own difference is
    # the op's (a kernel)
    assert [s.kind for s in report.sources] == ["uninitialized", "kernel"]


def test_fast_reach_agrees_with_networkx_on_random_streams():
    """The analysis sweeps arrays; networkx, the reference, must agree on every stream."""
    import random

    import networkx as nx
    import numpy as np

    from bisector.analysis.graph import Dataflow, reach, unexplained

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 60)
        differs = np.array([rng.random() < 0.6 for _ in range(n)])
        edges = sorted(
            {(rng.randrange(c), c) for c in range(1, n) for _ in range(rng.randint(0, 3))},
            key=lambda e: e[1],
        )
        edges = [(p, c) for p, c in edges if differs[p] and differs[c]]
        graph = Dataflow(
            differs, np.array([p for p, _ in edges], int), np.array([c for _, c in edges], int)
        )
        reference = graph.to_networkx()
        sources = [int(e) for e in np.flatnonzero(differs) if rng.random() < 0.3]
        expected = {s: len(nx.descendants(reference, s)) for s in sources}
        assert reach(graph, sources) == expected
        covered = set(sources).union(*(nx.descendants(reference, s) for s in sources))
        assert unexplained(graph, sources) == reference.number_of_nodes() - len(covered)


def test_a_custom_op_source_says_what_bisector_cannot_see():
    a = [Ev("leaf.tensor", [], [1]), Ev("mylib.fused_gelu.default", [(0, 0)], [2])]
    b = [Ev("leaf.tensor", [], [1]), Ev("mylib.fused_gelu.default", [(0, 0)], [3])]
    first = compare(make_trace(a), make_trace(b)).first_divergence
    assert first.kind == "kernel" and "custom op (mylib" in first.detail
