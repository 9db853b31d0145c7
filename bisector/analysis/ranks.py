"""Compare a multi-process job rank by rank, and follow differences across ranks.

Each rank's pair of traces is compared on its own (rank r of run A with rank r of run B). A
collective then looks like a source on every rank whose own contribution was equal: its inputs
are equal there, its outputs differ. If, on another rank, the same collective (the k-th one of
that rank: every rank calls the same collectives in the same order) received a contribution
that already differed, the collective did not make the difference, it carried it: it is a
*spreader*, and the origin is that rank's first source before it. A collective whose inputs are
equal on every rank and whose outputs still differ is a source in its own right.
"""

from __future__ import annotations

import numpy as np

from bisector.analysis import LONE_COLLECTIVE, compare_traces, lead_with_headline
from bisector.analysis.graph import Equality
from bisector.report import Report, RunInfo, Source, Spreader
from bisector.schema import is_collective
from bisector.trace import Trace

_OWN_COLLECTIVE = (
    "a collective whose inputs are equal in both runs on every rank of the job and whose "
    "outputs differ: the collective itself reduces in an order that varies between runs"
)


def compare_ranks(pairs: list[tuple[int, Trace, Trace]], runs: list[RunInfo]) -> Report:
    """Compare the traces of every rank and attribute differences that travel between ranks.

    Args:
        pairs: (rank, trace of run A, trace of run B) for each rank.
        runs: every rank's two runs, for the report.

    Returns:
        One Report: sources of every rank (each with its rank; collectives that only carried
        another rank's difference removed and listed in ``spreaders``), counts summed.
    """
    compared: dict[int, tuple[Report, Equality, Trace]] = {}
    for rank, a, b in pairs:
        report, eq = compare_traces(a, b)
        compared[rank] = (report, eq, a)
    ordinals = {rank: _collectives(trace) for rank, (_, _, trace) in compared.items()}

    sources: list[Source] = []
    spreaders: dict[int, Spreader] = {}
    for rank, (report, _, trace) in compared.items():
        for source in report.sources:
            k = _ordinal(ordinals[rank], source.event) if is_collective(source.op) else None
            origins = [] if k is None else _origins(compared, ordinals, rank, k)
            if k is None or not origins:
                if source.detail == LONE_COLLECTIVE and len(compared) >= trace.world_size:
                    # every rank is compared and none contributed a difference: its own
                    source.kind, source.detail = "kernel", _OWN_COLLECTIVE
                sources.append(source)
                continue
            entry = spreaders.setdefault(k, _spreader(trace, source, origins))
            entry["ranks"].append(rank)
    sources.sort(key=lambda s: (s.step, s.event, s.rank))
    skipped = None
    if all(report.structure is None for report, _, _ in compared.values()):
        sources, skipped = lead_with_headline(sources)

    verdicts = {r.verdict for r, _, _ in compared.values()}
    verdict = next(v for v in ("diverged", "inconclusive", "reproducible", "") if v in verdicts)
    merged = Report(
        reproducible=all(r.reproducible for r, _, _ in compared.values()),
        verdict=verdict,
        evidence={
            "ranks": {rank: r.evidence for rank, (r, _, _) in compared.items()},
            "reasons": [
                f"rank {rank}: {reason}"
                for rank, (r, _, _) in compared.items()
                for reason in r.evidence.get("reasons", [])
            ],
        },
        dead=[s for r, _, _ in compared.values() for s in r.dead],
        first_divergence=sources[0] if sources else None,
        sources=sources,
        runs=runs,
        compared_events=sum(r.compared_events for r, _, _ in compared.values()),
        differing_events=sum(r.differing_events for r, _, _ in compared.values()),
        sources_total=len(sources),
    )
    merged.spreaders = [spreaders[k] for k in sorted(spreaders)]
    if skipped is not None:
        merged.notes.append(skipped)
    first_rank = min(compared)
    merged.environment = compared[first_rank][0].environment
    # The curve and module tree of the rank of the first source (rank 0 if none).
    shown = merged.first_divergence.rank if merged.first_divergence else first_rank
    merged.curve, merged.modules = compared[shown][0].curve, compared[shown][0].modules
    for rank, (report, _, _) in sorted(compared.items()):
        merged.notes += [f"rank {rank}: {note}" for note in report.notes]
        if merged.structure is None and report.structure is not None:
            merged.structure = report.structure.copy()
            merged.structure["rank"] = rank
        if report.first_differing_event is not None and merged.first_differing_event is None:
            merged.first_differing_event = report.first_differing_event
    return merged


def _collectives(trace: Trace) -> np.ndarray:
    """Event indices of the trace's collectives, in order."""
    ops = trace.columns["op"]
    ids = [i for i, name in enumerate(trace.strings) if is_collective(name)]
    return np.flatnonzero(np.isin(ops, ids))


def _ordinal(collectives: np.ndarray, event: int) -> int | None:
    k = int(np.searchsorted(collectives, event))
    return k if k < len(collectives) and collectives[k] == event else None


def _origins(compared, ordinals, rank: int, k: int) -> list[tuple[int, Source | None]]:
    """Other ranks whose k-th collective received a contribution that already differed, with
    their first source before it."""
    found = []
    for other, (report, eq, _) in compared.items():
        if other == rank or k >= len(ordinals[other]):
            continue
        event = int(ordinals[other][k])
        if event >= len(eq.inputs_equal) or eq.inputs_equal[event]:
            continue
        before = [s for s in report.sources if s.event < event and not is_collective(s.op)]
        found.append((other, before[0] if before else None))
    return found


def _spreader(trace: Trace, source: Source, origins) -> Spreader:
    origin_rank, origin = origins[0]
    described = (
        f"{origin.op} in {origin.module or '(no module)'} on rank {origin_rank}"
        if origin is not None
        else f"a difference on rank {origin_rank}"
    )
    return {
        "op": source.op,
        "module": source.module,
        "phase": source.phase,
        "step": source.step,
        "location": source.location,
        "library": source.library,
        "from_ranks": [r for r, _ in origins],
        "origin": described,
        "ranks": [],
    }
