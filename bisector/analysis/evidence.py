"""What a verdict rests on: which differences are live, and whether the runs showed training.

Two rules keep a report honest (DESIGN.md, "Pitfalls found on real code"):

- **Only live differences decide.** A source whose difference reaches no later differing event
  and whose differing values were freed before the run ended (a oneDNN workspace, a reserve
  buffer, scratch) cannot change training: it is *dead*, listed apart, and never makes two runs
  "diverge". Values still held at the end (parameters, optimizer state, the script's outputs)
  always count. Traces without the list of live values (older ones) count everything as live.
- **"Reproducible" needs evidence.** Equal traces prove nothing when the recorded process never
  ran its model, stepped an optimizer that changed no parameter, or trained in processes it
  did not record (hogwild workers, ``mp.spawn``). Then the verdict is *inconclusive*, with why.
"""

from __future__ import annotations

import numpy as np

from bisector.analysis.align import Alignment
from bisector.report import Evidence, Source
from bisector.schema import (
    MORE_STEPS_FOR_OPTIMIZERS,
    describe,
    unseen_training,
    unstepped_optimizers,
)
from bisector.trace import OUT_PARTIAL, Trace
from bisector.words import counted

REPRODUCIBLE, DIVERGED, INCONCLUSIVE = "reproducible", "diverged", "inconclusive"


def live_rows(a: Trace, b: Trace, alignment: Alignment) -> np.ndarray | None:
    """Per output row of A, whether its value was still held at the end of either run (or is
    part of one that was: the rest of a storage under a partial write). None when a trace
    does not say (older traces, too many values): then every row is live."""
    rows = np.zeros(len(a.columns["out_kind"]), dtype=bool)
    a_of_b = np.full(len(b), -1, dtype=np.int64)
    paired = np.flatnonzero(alignment.b_of_a >= 0)
    a_of_b[alignment.b_of_a[paired]] = paired
    for trace, to_a in ((a, None), (b, a_of_b)):
        flat = trace.footer.get("live_at_end")
        if flat is None:
            return None
        pairs = np.asarray(flat, dtype=np.int64).reshape(-1, 2)
        events, slots = pairs[:, 0], pairs[:, 1]
        ok = (events >= 0) & (events < len(trace))
        events, slots = events[ok], slots[ok]
        if to_a is not None:
            events = to_a[events]
            slots = slots[events >= 0]
            events = events[events >= 0]
        within = slots < a.columns["n_out"][events]
        rows[a.out_start[events[within]] + slots[within]] = True
    # A live partial write keeps the value it wrote into alive: follow them back, newest first.
    kind = a.columns["out_kind"]
    partial = np.flatnonzero((kind & OUT_PARTIAL) > 0)
    if len(partial):
        back = a.columns["out_prev_back"].astype(np.int64)
        slot = a.columns["out_prev_slot"].astype(np.int64)
        event = a.out_event
        for row in partial[::-1].tolist():
            if rows[row] and back[row]:
                rows[a.out_start[event[row] - back[row]] + slot[row]] = True
    return rows


def is_dead(source: Source, a: Trace, row_differs: np.ndarray, live: np.ndarray | None) -> bool:
    """True if the source's difference reaches nothing that differs later and none of its
    differing values was held at the end of the run."""
    if live is None or source.kind == "structure" or source.spread != 0:
        return False
    start, end = int(a.out_start[source.event]), int(a.out_start[source.event + 1])
    differing = row_differs[start:end]
    return bool(differing.any()) and not bool((live[start:end] & differing).any())


def vanished(a: Trace, row_differs: np.ndarray, live: np.ndarray | None) -> bool:
    """True if values differ but none that differs was held when the recording ended: every
    difference died out on the way (a last-bit difference rounded away further on), so
    nothing the run kept (parameters, optimizer state, what the script took out of torch or
    still held) differs. Only within one process: a collective may have carried one to
    another rank."""
    if live is None or a.world_size > 1:
        return False
    return bool(row_differs.any()) and not bool((live & row_differs).any())


def vanished_note(first: Source) -> str:
    where = f"{first.op} in {first.module or '(no module)'} at {first.location or '?'}"
    return (
        "every difference vanished before the recording ended: no value the runs still held "
        "then differs (no parameter, no optimizer state, nothing the script kept), so what "
        f"they trained is bitwise alike; the difference that {where} made was rounded away "
        "further on (in a lower precision, say). Its cause remains: over more steps or in "
        "other runs such a difference can reach the weights"
    )


def dead_note(dead: list[Source]) -> str:
    first = dead[0]
    where = f"{first.op} in {first.module or '(no module)'} at {first.location or '?'}"
    more = f" and {len(dead) - 1} more" if len(dead) > 1 else ""
    return (
        f"outputs that nothing used differ ({where}{more}): no later result depends on them "
        "and they were freed before the run ended (scratch such as a oneDNN workspace or a "
        "reserve buffer), so they cannot change training and do not count as a divergence"
    )


def unseen_processes(a: Trace, b: Trace) -> list[dict]:
    """Processes whose torch work could change what was trained, unrecorded: those of run A
    (those of run B when A has none)."""
    for trace in (a, b):
        found = unseen_training(trace.footer.get("processes") or [])
        if found:
            return found
    return []


def blame_unseen(sources: list[Source], unseen: list[dict]) -> None:
    """Where processes the script started trained unrecorded (hogwild workers on shared
    parameters), an op whose recorded inputs are equal but whose outputs differ most likely
    read values those processes changed: say so instead of accusing the op."""
    if not unseen:
        return
    shown = "; ".join(describe(p) for p in unseen[:3])
    for source in sources:
        if source.kind in ("kernel", "uninitialized"):
            source.kind = "input"
            source.detail = (
                "its inputs are equal as far as this process recorded them, but processes the "
                f"script started trained unrecorded ({shown}) and can change the tensors it "
                "reads (parameters in shared memory): the difference comes from there; "
                "lock-free training in several processes (hogwild) depends on how their "
                "updates interleave"
            )


def judge(a: Trace, b: Trace, differs: bool, unseen: list[dict]) -> tuple[str, Evidence, list[str]]:
    """The verdict of a comparison: (verdict, evidence, notes).

    Args:
        a, b: the two traces.
        differs: a live difference was found (sources or differing events not explained as
            dead).
        unseen: the processes that trained unrecorded (``unseen_processes``).
    """
    footers = (a.footer, b.footer)
    steps = min(int(f.get("steps") or 0) for f in footers)
    evidence: Evidence = {
        "events": min(len(a), len(b)),
        "optimizer_steps": steps,
        "model_calls": _least(footers, "model_calls"),
        "parameter_writes": _least(footers, "parameter_writes"),
        "unseen_processes": [],
        "reasons": [],
    }
    notes: list[str] = []
    processes = [p for f in footers for p in (f.get("processes") or [])]
    if unseen and differs:  # else the verdict itself says it
        notes.append(
            f"torch work ran unrecorded in {_processes(len(unseen))} that the script started: "
            + "; ".join(describe(p) for p in unseen[:4])
        )
    evidence["unseen_processes"] = unseen
    workers = [p for p in processes if p.get("dataloader_worker") and p.get("did")]
    if workers:
        notes.append(
            f"{len({p['pid'] for p in workers})} DataLoader worker processes ran torch ops "
            "(their transforms) unrecorded; the batches they made are compared where the main "
            "process first reads them"
        )
    unstepped = unstepped_optimizers(*footers)
    if unstepped and differs:
        notes.append(
            f"{'; '.join(unstepped)}: never stepped while recording, its training was not compared"
        )
    if differs:
        return DIVERGED, evidence, notes
    reasons = evidence["reasons"]
    if unstepped:
        reasons.append(unstepped_reason(unstepped))
    if unseen:
        shown = "; ".join(describe(p) for p in unseen[:4])
        reasons.append(
            f"torch work ran in {_processes(len(unseen))} the script started, which bisector "
            f"did not record ({shown}): what they trained was not compared"
        )
    model_calls, writes = evidence["model_calls"], evidence["parameter_writes"]
    if model_calls == 0 and steps == 0:
        reasons.append(
            "the recorded part never ran a module with parameters nor stepped an optimizer: "
            "no model was compared (the steps may have ended in a data transform, or the model "
            "runs elsewhere)"
        )
    elif steps and writes == 0:
        reasons.append(
            f"the optimizer stepped {steps} times but no parameter of a module changed "
            "(no gradients?): there was no training to compare"
        )
    return (INCONCLUSIVE if reasons else REPRODUCIBLE), evidence, notes


def unstepped_reason(unstepped: list[str]) -> str:
    """Why runs that agree are inconclusive when these optimizers never stepped."""
    which = (
        f"the optimizer {unstepped[0]}"
        if len(unstepped) == 1
        else ("the optimizers " + "; ".join(unstepped))
    )
    return (
        f"{which} never stepped while recording (bisector records past --steps until every "
        f"optimizer has stepped, up to {counted(MORE_STEPS_FOR_OPTIMIZERS, 'step')} more): what "
        "it trains was not compared; record more steps (--steps) or the steps where it steps"
    )


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def _least(footers: tuple[dict, dict], key: str) -> int | None:
    values = [f.get(key) for f in footers]
    known = [int(v) for v in values if v is not None]
    return min(known) if len(known) == len(values) else None  # None: an older trace
