"""Compare two traces: align them, find the sources of divergence, and build the Report."""

from __future__ import annotations

import os
import re

import numpy as np

from bisector.analysis import evidence as proof
from bisector.analysis.align import Alignment, Break, align, project
from bisector.analysis.graph import (
    Equality,
    classify,
    compare_events,
    dataflow_graph,
    reach,
    reach_groups,
    source_events,
    unexplained,
)
from bisector.environment import differences
from bisector.errors import MismatchError
from bisector.report import ModuleRow, Report, RunInfo, Source
from bisector.schema import COMPILED_PREFIX, REPLAY_OP, UNINITIALISED_OPS, is_collective, is_leaf
from bisector.trace import (
    FLAG_RANDOM,
    FLAG_WIDE,
    MAX_ROWS,
    OUT_NODATA,
    PHASES,
    Trace,
    split_location,
)
from bisector.words import counted

# Sources beyond this many are counted (``sources_total``) but not listed one by one.
MAX_SOURCES = 1000


def compare(a: Trace, b: Trace, runs: list[RunInfo] | None = None) -> Report:
    """Compare two traces of the same program.

    (See ``compare_traces`` for the per-event comparison as well.)

    Args:
        a: trace of run A.
        b: trace of run B.
        runs: descriptions of the two runs; built from the traces if not given.

    Returns:
        The Report. Streams that stop matching never raise: the break is a "structure" source.

    Raises:
        MismatchError: the traces cannot be compared at all (nothing recorded, or they come
            from different scripts and share no event).
    """
    return compare_traces(a, b, runs)[0]


def compare_traces(
    a: Trace, b: Trace, runs: list[RunInfo] | None = None
) -> tuple[Report, Equality]:
    """``compare``, also returning the per-event comparison (for the attribution across ranks).

    Raises:
        MismatchError: as ``compare``.
    """
    if len(a) == 0 and len(b) == 0:
        raise MismatchError(
            "neither trace holds any torch operator: did the script run any PyTorch code?"
        )
    scheme_a, scheme_b = a.header.get("fingerprint"), b.header.get("fingerprint")
    if scheme_a != scheme_b:
        raise MismatchError(
            f"the traces use different fingerprint functions ({scheme_a} and {scheme_b}): "
            "record both runs with the same bisector version"
        )
    alignment = align(a, b)
    script_a, script_b = _script(a), _script(b)
    if alignment.prefix == 0 and script_a != script_b:
        raise MismatchError(
            f"the traces come from different scripts ({script_a} and {script_b}) and share no "
            "event; compare two runs of the same script"
        )
    view, ids = aligned(a, b, alignment)
    eq = compare_events(a, view, alignment.b_of_a >= 0, ids)
    found = _collective_results(a, eq, source_events(eq).tolist())
    graph = dataflow_graph(eq)
    spread = reach(graph, found)

    sources = [_source(a, view, eq, event, spread.get(event)) for event in found[:MAX_SOURCES]]
    unseen = proof.unseen_processes(a, b)
    proof.blame_unseen(sources, unseen)
    live = proof.live_rows(a, b, alignment)
    dead = [s for s in sources if proof.is_dead(s, a, eq.row_differs, live)]
    if dead:
        sources = [s for s in sources if s not in dead]
    breaks = alignment.breaks
    followers = _after_breaks(eq, breaks)
    break_spread = reach_groups(graph, followers)
    for k, brk in enumerate(breaks[:MAX_SOURCES]):
        # what a break that never resumes changed lies in the uncompared rest: unknown
        known = k < len(break_spread) and brk.resume_a is not None
        sources.append(_structure_source(a, b, brk, break_spread[k] if known else None))
    sources.sort(key=lambda source: source.event)
    structure = None
    if breaks:
        structure = breaks[0].to_dict()
        structure["breaks"] = [x.to_dict() for x in breaks[:100]]
    differing = np.flatnonzero(eq.out_differs)
    notes = _notes(a, b)
    notes += _hash_seed_note(a, b, sources, notes)
    lost = unexplained(graph, found + [e for group in followers for e in group])
    if lost:
        notes.append(
            f"{lost} differing events are not downstream of any source found; their cause may "
            "be a value bisector could not follow (an untracked tensor)"
        )
    notes += _break_notes(alignment)
    total = len(found) + len(breaks) - len(dead)
    if dead:
        notes.append(proof.dead_note(dead))
    if sources and not breaks and proof.vanished(a, eq.row_differs, live):
        notes.append(proof.vanished_note(sources[0]))
    skipped = None
    ends_uncompared = breaks and breaks[-1].resume_a is None and breaks[-1].a < len(a)
    # (Spread says too little after a break, or where the ops of one module only were
    # recorded: what it makes is read outside it, unrecorded.)
    if not ends_uncompared and not a.header.get("inside"):
        sources, skipped = lead_with_headline(sources)
    if skipped is not None:
        notes.append(skipped)
    environment = differences(a.header, b.header, a.footer, b.footer)
    if environment:  # a different library, device or flag changes results by itself
        for source in sources:
            if source.kind == "kernel":
                source.detail = (
                    "its inputs and arguments are equal in both runs but its outputs differ: "
                    "the op is nondeterministic, or computes differently in the other run's "
                    "environment (see what differs: "
                    + ", ".join(str(e["what"]) for e in environment[:4])
                    + ")"
                )
    only_dead = bool(dead) and unexplained(graph, [s.event for s in dead]) == 0
    live_difference = bool(sources) or (len(differing) > 0 and not only_dead)
    verdict, evidence, more_notes = proof.judge(a, b, live_difference, unseen)
    notes += more_notes
    report = Report(
        reproducible=verdict == proof.REPRODUCIBLE,
        verdict=verdict,
        evidence=evidence,
        dead=dead,
        first_divergence=sources[0] if sources else None,
        sources=sources,
        runs=runs or [run_info("A", a), run_info("B", b)],
        compared_events=alignment.paired,
        differing_events=int(len(differing)),
        first_differing_event=int(differing[0]) if len(differing) else None,
        structure=structure,
        notes=notes,
        sources_total=total,
        environment=environment,
        curve=_curve(a, view, eq),
        modules=_modules(a, eq),
    )
    return report, eq


def aligned(a: Trace, b: Trace, alignment: Alignment | None = None) -> tuple[Trace, np.ndarray]:
    """Run B in run A's event numbering (``align.project``), and the string id map to use
    with it (B's own strings when the streams match throughout and need no projection)."""
    alignment = alignment or align(a, b)
    if not alignment.breaks and len(a) == len(b):
        return b, alignment.ids_b_to_a
    view = project(b, alignment, a)
    return view, np.arange(len(view.strings), dtype=np.int64)


def _after_breaks(eq: Equality, breaks: list[Break]) -> list[list[int]]:
    """Per break, the differing events that read a value of an unpaired event, from that break
    to the next: what the break itself made differ."""
    events = np.flatnonzero(eq.orphaned & eq.out_differs)
    starts = np.array([x.a for x in breaks], dtype=np.int64)
    owner = np.searchsorted(starts, events, side="right") - 1
    groups: list[list[int]] = [[] for _ in breaks]
    for event, k in zip(events.tolist(), owner.tolist(), strict=True):
        if k >= 0:
            groups[k].append(event)
    return groups


def _break_notes(alignment: Alignment) -> list[str]:
    breaks = alignment.breaks
    if not breaks:
        return []
    first = breaks[0]
    resumed = [x for x in breaks if x.resume_a is not None]
    note = (
        f"the op streams stop matching at event {first.a} of run A ({first.b} of run B): "
        f"{first.reason}"
    )
    if len(breaks) > 1:
        note += f"; {len(breaks)} places in all where they stop matching"
    if resumed:
        note += (
            "; past a break, events are paired by op, module and phase only, so later pairs "
            "may be misaligned (differences found there are less certain)"
        )
    if breaks[-1].resume_a is None:
        note += "; events after the last break are not compared"
    if alignment.truncated:
        note += f"; bisector stopped aligning after {len(breaks)} breaks"
    return [note]


# Points of the difference curve kept in a report (the largest of each bucket of events).
MAX_CURVE_POINTS = 2000
# Modules listed in a report (those with the most events).
MAX_MODULES = 500


def _curve(a: Trace, b: Trace, eq: Equality) -> list[list]:
    """[event, step, lower bound of max|A-B|] of differing events, at most MAX_CURVE_POINTS:
    the largest of each bucket, so a spike is never averaged away. ``b``: run B in A's
    numbering."""
    if not eq.out_differs.any():
        return []
    bound = np.nan_to_num(difference_bounds(a, b, slice(None)), nan=0.0, posinf=np.inf)
    bound = np.where(eq.row_differs, bound, 0.0)
    per_event = np.zeros(len(a))
    np.maximum.at(per_event, a.out_event, bound)
    events = np.flatnonzero(eq.out_differs)
    if len(events) > MAX_CURVE_POINTS:
        buckets = np.array_split(events, MAX_CURVE_POINTS)
        events = np.array([bucket[np.argmax(per_event[bucket])] for bucket in buckets])
    steps = a.columns["step"]
    return [[int(e), int(steps[e]), float(per_event[e])] for e in events]


def _modules(a: Trace, eq: Equality) -> list[ModuleRow]:
    """Per module path: events recorded in it and how many of them differ."""
    ids = a.columns["module"].astype(np.int64)
    events = np.bincount(ids, minlength=len(a.strings))
    differing = np.bincount(ids[eq.out_differs], minlength=len(a.strings))
    used = np.flatnonzero(events)
    used = used[np.argsort(-events[used], kind="stable")][:MAX_MODULES]
    return [
        {"module": a.strings[i], "events": int(events[i]), "differing": int(differing[i])}
        for i in sorted(used, key=lambda i: a.strings[i])
    ]


def lead_with_headline(sources: list[Source]) -> tuple[list[Source], str | None]:
    """Put the headline source first: the first in execution order whose difference reaches
    later events. A first source that nothing reads afterwards (a random init overwritten by a
    checkpoint, say) explains none of what differs: it stays in the list, not in the headline.

    Returns:
        The reordered sources, and a note when the headline is not the first in order.
    """
    if not sources or sources[0].spread != 0:
        return sources, None
    for i, source in enumerate(sources):
        if source.spread != 0:  # None: reach not computed, so it may reach further
            skipped = sources[0]
            note = (
                f"the first source in execution order, {skipped.op} in "
                f"{skipped.module or '(no module)'} (step {skipped.step}), is read by nothing "
                "that differs later (its value was overwritten or unused): the headline is the "
                "first source whose difference spreads"
            )
            return [source, *sources[:i], *sources[i + 1 :]], note
    return sources, None


def _script(trace: Trace) -> str:
    argv = trace.header.get("argv") or [""]
    return os.path.basename(str(argv[0]))


def run_info(name: str, trace: Trace) -> RunInfo:
    """What a run did, from its trace alone."""
    return RunInfo(
        name=name,
        trace=trace.path,
        events=len(trace),
        steps=int(trace.footer.get("steps", 0)),
        status=str(trace.footer.get("status", "incomplete")),
        complete=trace.complete,
        seconds=trace.footer.get("seconds"),
    )


def location(trace: Trace, event: int) -> str:
    """The user's line of an event, relative to the run's working folder when inside it."""
    return _relative(trace, split_location(trace.string("location", event))[0])


def library_location(trace: Trace, event: int) -> str:
    """The library's line that issued the event inside the user's line ("" when none)."""
    return _relative(trace, split_location(trace.string("location", event))[1])


def relative_line(trace: Trace, text: str) -> str:
    """A location string (user line, or library line alone) as ``location`` shows it."""
    user, library = split_location(text)
    return _relative(trace, user or library)


def _relative(trace: Trace, text: str) -> str:
    """A path relative to the run's working folder when inside it, to site-packages when an
    installed package's."""
    path, _, line = text.rpartition(":")
    cwd = str(trace.header.get("cwd", ""))
    marker = f"{os.sep}site-packages{os.sep}"
    installed = path.rfind(marker)
    if path and cwd and path.startswith(os.path.join(cwd, "")):
        path = os.path.relpath(path, cwd)
    elif installed >= 0:
        path = path[installed + len(marker) :]
    return f"{path}:{line}" if path else text


def difference_bounds(a: Trace, b: Trace, rows) -> np.ndarray:
    """Per output row, a lower bound of max|a - b| from the recorded stats (NaN if unknown).

    |max|a| - max|b|| and |sum(a) - sum(b)| / numel are both lower bounds of max|a - b|; we
    keep the larger.
    """
    ca, cb = a.columns, b.columns
    with np.errstate(invalid="ignore"):  # inf - inf (a logit mask's -inf): unknown, NaN
        by_max = np.abs(ca["out_absmax"][rows].astype(np.float64) - cb["out_absmax"][rows])
        numel = np.maximum(ca["out_numel"][rows], 1).astype(np.float64)
        by_sum = np.abs(ca["out_sum"][rows] - cb["out_sum"][rows]) / numel
        return np.fmax(by_max, by_sum)


def _magnitude(a: Trace, b: Trace, eq, event: int) -> float | None:
    """A lower bound of the largest absolute difference over the event's differing outputs."""
    start, end = int(a.out_start[event]), int(a.out_start[event + 1])
    rows = np.arange(start, end)[eq.row_differs[start:end]]
    if not len(rows):
        return None
    bound = difference_bounds(a, b, rows)
    return float(np.nanmax(bound)) if not np.all(np.isnan(bound)) else float("nan")


# A collective compared on one rank: what the other ranks contributed is not in this trace.
LONE_COLLECTIVE = (
    "a collective whose inputs on this rank are equal in both runs and whose outputs differ: "
    "the difference may come from another rank's contribution, which this comparison does not "
    "see; compare every rank (`find --nproc-per-node`, or `bisector diff` of the jobs' names, "
    "e.g. a.trace b.trace for a.rank*.trace) to tell a carried difference from the collective's own"
)


def _source(a: Trace, b: Trace, eq, event: int, spread: int | None) -> Source:
    op = a.string("op", event)
    args_equal = bool(eq.args_equal[event])
    random = bool(a.columns["flags"][event] & FLAG_RANDOM)
    kind = classify(op, args_equal, random, bool(eq.rewired[event]))
    details = {
        "input": "this tensor was not produced by a recorded op and its value differs "
        "(data batch, initial weights or state loaded from outside, or made by code that "
        "bypasses PyTorch's dispatcher, such as an extension called directly)",
        "argument": "its tensor inputs are equal but a non-tensor argument differs",
        "rng": "a random op whose tensor inputs are equal: the generator state differed "
        "(seed not set, or set from something that changes between runs)",
        "kernel": "its inputs and arguments are equal in both runs but its outputs differ: "
        "the op itself is nondeterministic",
        "structure": "it reads a tensor made by a different op in the two runs: the dataflow "
        "changed here",
    }
    args = [a.string("args", event), b.string("args", event)] if kind == "argument" else []
    detail = details[kind]
    if kind == "argument" and _views_only(*args):
        detail = (
            "it reads another part of an equal tensor: the view it reads (offset or strides, "
            "after `@` and `s` in its arguments) differs, as from `data[i]` with an `i` that "
            "differs between the runs (an index drawn from an unseeded generator, an order)"
        )
    elif kind == "input" and int(a.columns["n_in"][event]):
        detail = (
            "this tensor was changed by code bisector did not see (not a recorded op) after "
            "its last recorded value, which is equal in both runs"
        )
    namespace = op.split(".", 1)[0]
    written: list[str] = []
    built = ""
    if kind == "argument" and not _views_only(*args):
        module = a.string("module", event)
        path, written, built = as_written(a, b, module)
        if written:
            detail += "; so do the arguments of the module that runs it, as the script gives them"
            if path != module:  # a parent's arguments: name it
                written = [f"{path} = {text}" for text in written]
    if kind == "kernel" and op.startswith(COMPILED_PREFIX):
        detail = (
            "code compiled by torch.compile: its inputs (and the module's parameters) are equal "
            "in both runs but what it returns differs; bisector sees its boundary, not the "
            "fused kernels inside: `--try no-compile` runs it op by op to look inside"
        )
    elif kind == "kernel" and op == REPLAY_OP:
        detail = (
            "a CUDA graph replay: what its capture read is equal in both runs but what it wrote "
            "differs; bisector sees the replay, not the kernels inside: run the captured code "
            "without the graph (eagerly) to look inside"
        )
    elif kind == "kernel" and is_collective(op) and a.world_size > 1:
        kind, detail = "unconfirmed", LONE_COLLECTIVE
    elif kind == "kernel" and a.columns["flags"][event] & FLAG_WIDE:
        kind = "unconfirmed"
        detail = (
            f"its outputs differ, but it reads more than {MAX_ROWS} distinct tensors and bisector "
            f"records the first {MAX_ROWS}: a difference in the others is not seen"
        )
    elif kind == "kernel" and namespace not in _BUILTIN_NAMESPACES:
        detail += (
            f"; it is a custom op ({namespace}: an extension or a torch.library op): bisector "
            "sees its inputs and outputs, not the kernels inside it"
        )
    if kind == "kernel":
        made = _uninitialised_input(a, eq, event)
        if made is not None:
            kind = "uninitialized"
            detail = (
                f"it reads memory that was never written: the tensor made by {made} holds "
                "whatever was in memory; initialise it (torch.zeros rather than torch.empty) or "
                "write all of it before it is read"
            )
    return Source(
        kind=kind,
        op=op,
        module=a.string("module", event),
        phase=PHASES[int(a.columns["phase"][event])],
        step=int(a.columns["step"][event]),
        rank=a.rank,
        location=location(a, event),
        library=library_location(a, event),
        max_abs_diff=_magnitude(a, b, eq, event),
        event=event,
        detail=detail,
        spread=spread,
        args=args,
        written=written,
        built=built,
    )


def as_written(a: Trace, b: Trace, module: str) -> tuple[str, list[str], str]:
    """The module, or its nearest parent, whose arguments differ between the runs as the user
    wrote them (the recorder's ``module_info``: class, extra_repr, built at): (its path,
    ["Dropout(p=0.114, inplace=False)", its description in run B], the line that built it);
    ("", [], "") if none differs or none was described."""
    info_a, info_b = a.footer.get("module_info") or {}, b.footer.get("module_info") or {}
    paths = []
    path = module
    while path:
        paths.append(path)
        path = path.rpartition(".")[0]
    paths += [name for name, (cls, _, _) in info_a.items() if name == cls]  # roots, by class
    for path in paths:
        mine, theirs = info_a.get(path), info_b.get(path)
        if mine and theirs and mine[:2] != theirs[:2]:
            built = relative_line(a, mine[2]) if mine[2] else ""
            return path, [f"{mine[0]}({mine[1]})", f"{theirs[0]}({theirs[1]})"], built
    return "", [], ""


_GEOMETRY = re.compile(r"(s\[[0-9, ]*\])?(@[0-9]+)?(?=,|$)")


def _views_only(args_a: str, args_b: str) -> bool:
    """True if two argument strings differ only in the view geometry of their tensors."""
    return args_a != args_b and _GEOMETRY.sub("", args_a) == _GEOMETRY.sub("", args_b)


# Op namespaces of PyTorch itself; any other is a custom op (C++/CUDA extension, torch.library).
_BUILTIN_NAMESPACES = frozenset(
    {"aten", "prims", "c10d", "_c10d_functional", "leaf", "quantized", "_quantized"}
)


def _collective_results(a: Trace, eq, found: list[int]) -> list[int]:
    """Source events, with a tensor first seen right after a collective (the recorder gives
    it the collective as its input) taken for the collective itself: it is a result the
    backend returned through a buffer of its own (gloo's reduce-scatter), so a difference it
    holds while the collective's recorded inputs are equal is the collective's."""
    mapped: list[int] = []
    for event in found:
        if is_leaf(a.string("op", event)) and int(a.columns["n_in"][event]) == 1:
            producer = int(eq.producer[int(a.in_start[event])])
            if producer >= 0 and is_collective(a.string("op", producer)):
                event = producer
        if event not in mapped:
            mapped.append(event)
    return sorted(mapped)


def _uninitialised_input(a: Trace, eq, event: int) -> str | None:
    """ "op at file:line" of an uninitialised tensor (torch.empty and kin) that the event reads as
    data, or None. The first input of an in-place op is not counted: those ops (fill_, copy_,
    uniform_, ...) mostly overwrite it."""
    start, end = int(a.in_start[event]), int(a.in_start[event + 1])
    in_place = a.string("op", event).split(".")[1].endswith("_")
    for position, row in enumerate(range(start, end)):
        producer = int(eq.producer[row])
        if producer < 0 or (in_place and position == 0):
            continue
        op = a.string("op", producer)
        if op not in UNINITIALISED_OPS:
            continue
        value_row = int(a.out_start[producer]) + int(a.columns["in_slot"][row])
        if a.columns["out_kind"][value_row] & OUT_NODATA:
            return f"{op} at {location(a, producer)}"
    return None


def _structure_source(a: Trace, b: Trace, brk: Break, spread: int | None) -> Source:
    """The break of the op streams as a source, placed at A's first unpaired event."""
    trace, index = (a, brk.a) if brk.a < len(a) else (b, brk.b)
    index = min(index, len(trace) - 1)
    op_a = a.string("op", brk.a) if brk.a < len(a) else "(end of run)"
    op_b = b.string("op", brk.b) if brk.b < len(b) else "(end of run)"
    return Source(
        kind="structure",
        op=op_a,
        module=trace.string("module", index),
        phase=PHASES[int(trace.columns["phase"][index])],
        step=int(trace.columns["step"][index]),
        rank=a.rank,
        location=location(trace, index),
        library=library_location(trace, index),
        max_abs_diff=None,
        event=brk.a,
        detail=brk.reason,
        spread=spread,
        args=[op_a, op_b],
    )


def _hash_seed_note(a: Trace, b: Trace, sources: list[Source], notes: list[str]) -> list[str]:
    """A hint when data built in Python differs and nothing seeded explains it: string hashing
    is salted per process unless PYTHONHASHSEED is set, so a set's order changes."""
    first = sources[0] if sources else None
    if first is None or first.kind not in ("input", "structure") or notes:
        return []  # (a note already names a generator that differs)
    if any("PYTHONHASHSEED" in t.header.get("settings", {}).get("env", {}) for t in (a, b)):
        return []
    return [
        "PYTHONHASHSEED is not set and no seeded generator differs between the runs: if the "
        "data comes from iterating a set of strings (a vocabulary built with set(), "
        "set(words) - stop_words), its order changes in every process; sort it, or set "
        "PYTHONHASHSEED=0 before Python starts (`--try seed-everything` does)"
    ]


def _notes(a: Trace, b: Trace) -> list[str]:
    notes = []
    replays = max(int(t.footer.get("cuda_graph_replays") or 0) for t in (a, b))
    if replays:
        notes.append(
            f"the script replayed CUDA graphs ({replays} times): each replay outside compiled "
            f"code is one `{REPLAY_OP}` event that reads what its capture read and writes what "
            "it wrote (still alive); the kernels inside a replay are not visible"
        )
    compiled_calls = max(int(t.footer.get("compiled_calls") or 0) for t in (a, b))
    if compiled_calls:
        notes.append(
            f"the script runs compiled code (torch.compile, {compiled_calls} calls): each call "
            "is recorded at its boundary as one `compiled.*` event (inputs, parameters and "
            "outputs; gradients in backward); the ops inside are not visible; "
            "`--try no-compile` runs both without compiling, to look inside"
        )
    elif "torch.compile" in (a.footer.get("modules") or []):
        notes.append(
            "the script uses torch.compile, but this torch does not let a recording mode leave "
            "compiled code alone: compiled code ran op by op in eager PyTorch, so these runs "
            "show eager numerics; `--check-observer` compares with a plain (compiled) run"
        )
    for name, trace in (("A", a), ("B", b)):
        if not trace.complete:
            notes.append(f"trace of run {name} is cut short (the run was killed while recording)")
    seed_a = a.footer.get("seeds_at_end", {}).get("torch_initial_seed")
    seed_b = b.footer.get("seeds_at_end", {}).get("torch_initial_seed")
    if seed_a is not None and seed_b is not None and seed_a != seed_b:
        notes.append(
            "torch's seed differs at the end of the runs (torch.manual_seed was not called, was "
            "called with a value that changes, or torch.seed() reseeded from the system after "
            "it)"
        )
    for generator, sites in unseeded_draws(a, b).items():
        library = "Python's random" if generator == "random" else generator
        if not sites:
            notes.append(f"{library} ends in different states in the two runs (unseeded?)")
            continue
        line, function, calls, step = sites[0]
        more = f", and from {counted(len(sites) - 1, 'more line')}" if len(sites) > 1 else ""
        notes.append(
            f"{library} ends in different states in the two runs and was never seeded: the "
            f"script draws from it at {relative_line(a, line)} "
            f"(`{generator}.{function}`, {counted(calls, 'call')}, first in step {step}){more}"
        )
    return notes


# Digests of the generators' states (capture/settings.py) by the name draws are noted under.
_GENERATOR_STATES = {"random": "python_random", "numpy.random": "numpy_random"}


def unseeded_draws(a: Trace, b: Trace) -> dict[str, list[list]]:
    """Python's and numpy's global generators that end the two runs in different states,
    each with the lines of run A that drew from it unseeded ([line, function, calls, step];
    none where it was seeded, or where the run did not note its draws).

    A generator is unseeded when no seed call of the script's gave it a value (``seed()`` and
    ``default_rng()`` take theirs from the system)."""
    found = {}
    for generator, key in _GENERATOR_STATES.items():
        start_a = a.header.get("seeds_at_start", {}).get(key)
        end_a = a.footer.get("seeds_at_end", {}).get(key)
        end_b = b.footer.get("seeds_at_end", {}).get(key)
        if end_a is None or end_b is None or end_a == end_b or start_a == end_a:
            continue
        noted = (a.footer.get("draws") or {}).get(generator) or {"sites": [], "seeds": []}
        seeded = any(not text.endswith("(None)") for _, text in noted["seeds"])
        found[generator] = [] if seeded else noted["sites"]
    return found
