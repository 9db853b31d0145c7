"""Confirm a cause: replay the source ops in isolation, rerun the pair with suspects swapped.

``confirm`` takes the report of a plain pair and adds to it: replays of the first sources (is
the op nondeterministic by itself?), one pair of runs per applicable intervention (which change
makes the runs identical, which only changes how fast the difference grows), the growth of the
difference per step, and a verdict: the cause, the evidence, and the smallest fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bisector import analysis
from bisector.capture import snapshots
from bisector.capture.compiled import PREFIX as COMPILED_PREFIX
from bisector.confirm.interventions import Intervention, RunFacts, Situation, choose
from bisector.confirm.replay import Replay, replay
from bisector.errors import InternalError, ScriptError
from bisector.pairs import Pair, record_pair
from bisector.report import Report, Source
from bisector.runner import RunOptions, run_ranks, run_recorded
from bisector.trace import PHASES, Trace

# Fixes in order of preference: the smallest, most targeted change first.
_PREFERENCE = (
    "sdpa-math",
    "eager-attention",
    "cudnn",
    "no-tf32",
    "serial-dataloader",
    "seed-everything",
    "deterministic",
    "single-thread",
    "no-compile",
)
# Sources replayed at most (each replay runs the op N times).
_MAX_REPLAYS = 3
# A difference that grows or shrinks by more than this factor marks an amplifier. Large, since
# run-to-run noise alone moves it by a few times (unseeded data differs wholly in every pair).
_AMPLIFIER_FACTOR = 100.0


@dataclass(frozen=True)
class ConfirmOptions:
    """How a cause is confirmed.

    Attributes:
        replays: times each source op is re-run on its saved inputs.
        forced: interventions to try even where they do not seem to apply.
        only_forced: try only the forced interventions.
        run: how each run is made (interpreter, timeout).
    """

    replays: int = 20
    forced: tuple[str, ...] = ()
    only_forced: bool = False
    run: RunOptions = RunOptions()


def confirm(
    script: str | os.PathLike,
    args: tuple[str, ...],
    pair: Pair,
    workdir: Path,
    options: ConfirmOptions,
) -> Report:
    """Add replays, confirmations, growth and a verdict to the report of a plain pair (of
    processes, or of torchrun jobs: then every pair with an intervention is a torchrun job
    too, compared rank by rank)."""
    report = pair.report
    report.growth = pair_growth(pair)
    if report.reproducible or report.first_divergence is None:
        return report
    steps = report.first_divergence.step + 1
    replayed = _replays(script, args, report.sources, ("kernel", "rng"), workdir, steps, options)
    report.replay = [vars(r) for r in replayed]
    check_claims(report)
    situation = _situation(pair, report.sources)
    if options.only_forced:
        from bisector.confirm.interventions import get

        chosen = [get(name) for name in options.forced]
    else:
        chosen = choose(situation, options.forced)
    for intervention in chosen:
        report.confirmations.append(
            _pair(script, args, intervention, report, workdir, steps, options)
        )
    report.cause, report.fix = _verdict(report)
    return report


def _situation(pair: Pair, sources: list[Source]) -> Situation:
    """What the pair shows, to choose interventions: run A of the first source's rank, with
    the ops of every rank."""
    trace, _ = pair.lead()
    footer = trace.footer
    return Situation(
        sources=sources,
        ops=frozenset().union(*(_ops(a) for a in pair.traces_a().values())),
        gpus=tuple(trace.header.get("versions", {}).get("gpus", [])),
        settings=footer.get("settings_at_end") or trace.header.get("settings", {}),
        optimizers=frozenset(footer.get("optimizers", [])),
        modules=frozenset(footer.get("modules", [])),
    )


def _replays(
    script,
    args,
    sources: list[Source],
    kinds: tuple[str, ...],
    workdir: Path,
    steps: int,
    options: ConfirmOptions,
):
    """A capture run saving the inputs of the first sources of these kinds, then their
    replays (in a torchrun job: one capture job per rank that has such sources; that rank
    saves, and the op is replayed in one process)."""
    wanted = [
        s
        for s in sources
        if s.kind in kinds
        and s.step < steps  # the capture run stops after these steps
        and not s.op.startswith(COMPILED_PREFIX)  # not one op
    ][:_MAX_REPLAYS]
    results = []
    job = options.run.launch is not None
    for rank in sorted({s.rank for s in wanted}):
        mine = [s for s in wanted if s.rank == rank]
        folder = workdir / "replay" / f"rank{rank}" if job else workdir / "replay"
        missed = _capture(script, args, mine, rank, folder, workdir, steps, options)
        results += [_replay_one(source, folder, missed, options) for source in mine]
    return results


def _capture(script, args, sources, rank, folder, workdir, steps, options) -> str:
    """Run the script once saving the sources' inputs; returns why an input may be missing.
    If the run fails, whatever was captured before the failure is still replayed."""
    capture = tuple(sorted(s.event for s in sources))
    run = replace(options.run, steps=steps, echo=False, capture=capture, capture_dir=str(folder))
    try:
        if options.run.launch is None:
            run_recorded(script, args, workdir / "capture.trace", run, name="capture")
        else:
            run = replace(run, capture_rank=rank)
            run_ranks(script, args, workdir / f"capture-rank{rank}.trace", run, name="capture")
    except (ScriptError, InternalError) as exc:
        failure = _error_line(exc) if isinstance(exc, ScriptError) else str(exc)
        return f"the capture run failed: {failure}"
    return "the capture run ended before reaching the op"


def _replay_one(source: Source, folder: Path, missed: str, options: ConfirmOptions) -> Replay:
    inputs = folder / f"event-{source.event}.pt"
    if not inputs.exists() and not inputs.with_suffix(".error").exists():
        error = f"its inputs were not captured: {missed}"
        return Replay(source.op, source.event, 0, None, "", error, rank=source.rank)
    seed = 0 if source.kind == "rng" else None  # same generator state on every run
    result = replay(inputs, source.event, options.replays, seed=seed)
    result.rank = source.rank
    if result.op == "?":  # its inputs could not be read or saved
        result.op = source.op
    if result.op != source.op and result.error is None:
        result.error = f"the capture run reached {result.op} where the source is {source.op}"
    return result


# Replays of the headline kernel source when nothing else is confirmed (``--no-confirm``).
CHECK_REPLAYS = 10


def check_kernel_claims(
    script, args: tuple[str, ...], report: Report, workdir: Path, run: RunOptions
) -> Report:
    """Replay the kernel sources (the first few) a few times on their captured inputs, and
    keep the claim "the op is nondeterministic" only where a replay shows it (see
    ``check_claims``). Cheap: one capture run that stops once the inputs are saved."""
    if report.first_divergence is None or not any(s.kind == "kernel" for s in report.sources):
        return report
    options = ConfirmOptions(replays=CHECK_REPLAYS, run=run)
    steps = report.first_divergence.step + 1
    replayed = _replays(script, args, report.sources, ("kernel",), workdir, steps, options)
    report.replay = [vars(r) for r in replayed]
    check_claims(report)
    return report


def check_claims(report: Report) -> None:
    """Mark each kernel source with how its claim was checked (``source.checked``); a kernel
    source whose replay on its captured inputs is bitwise stable is not a proven kernel: it
    becomes ``unconfirmed``, with what bisector compared and how to tell the causes apart."""
    replays = {(r.get("rank", 0), r["event"]): r for r in report.replay}
    for source in report.sources:
        if source.kind != "kernel":
            continue
        replayed = replays.get((source.rank, source.event))
        if replayed is None or replayed.get("distinct_results") is None:
            why = (replayed or {}).get("error") or "not replayed (only the first are)"
            source.checked = {"how": "replay", "result": "not checked", "why": why}
            continue
        runs, distinct = replayed["runs"], replayed["distinct_results"]
        checked = {"how": "replay", "runs": runs, "distinct_results": distinct}
        if distinct > 1:
            source.checked = {**checked, "result": "confirmed"}
            continue
        source.checked = {**checked, "result": "contradicted"}
        source.kind = "unconfirmed"
        source.detail = (
            f"its recorded inputs and arguments are equal and its outputs differ, yet {runs} "
            "replays on its captured inputs gave one result. Either its inputs differ in a way "
            "bisector does not compare (it compares each input's producer, value fingerprint "
            "and view geometry, and the non-tensor arguments; not memory alignment, thread "
            "count or state outside tensors), or the op's algorithm is chosen once per process "
            "(autotuning such as cudnn.benchmark, a library's heuristics). To tell them apart: "
            "rerun with the choice pinned (`--try deterministic`, `--try cudnn`): if the runs "
            "become identical, it was the choice"
        )


def _pair(
    script,
    args,
    intervention: Intervention,
    report: Report,
    workdir: Path,
    steps: int,
    options: ConfirmOptions,
) -> dict:
    """Run both runs with one intervention and say what it changed."""
    folder = workdir / intervention.name
    run = replace(
        options.run, steps=steps, echo=False, interventions=(intervention.name,), snapshots=True
    )
    entry = {
        "intervention": intervention.name,
        "outcome": "",
        "reproducible": None,
        "error": None,
        "first_divergence": None,
        "summary": intervention.summary,
    }
    try:
        intervened = record_pair(script, args, folder, run)
    except ScriptError as exc:
        entry.update(outcome="fails", error=_error_line(exc))
        return entry
    paired = intervened.report
    entry["reproducible"] = paired.reproducible
    facts = [_facts(trace) for _, a, b in intervened.ranks for trace in (a, b)]
    overrides = [o for f in facts for o in f.notes.get("overrides", [])]
    entry["overrides"] = list({(o["what"], o["line"]): o for o in overrides}.values())
    not_applied = next(filter(None, (intervention.check(f) for f in facts)), None)
    if not_applied is not None:  # the pair says nothing about the change
        entry.update(outcome="did-not-apply", not_applied=not_applied)
        return entry
    if paired.reproducible:
        entry["outcome"] = "fixes"
        return entry
    first = paired.first_divergence
    entry["first_divergence"] = None if first is None else f"{first.op} ({first.kind})"
    base = _final_growth(report.growth, steps)
    changed = _final_growth(pair_growth(intervened), steps)
    entry["outcome"], entry["growth_ratio"] = _amplification(base, changed)
    entry["param_diff"], entry["baseline_param_diff"] = changed, base
    return entry


def _facts(trace: Trace) -> RunFacts:
    """What a run of a pair shows about the intervention applied to it."""
    try:
        notes = json.loads(Path(f"{trace.path}.intervened").read_text())
    except (OSError, ValueError):
        notes = {}
    return RunFacts(ops=_ops(trace), footer=trace.footer, notes=notes)


def _ops(trace: Trace) -> frozenset[str]:
    """Every op name recorded in a trace."""
    return frozenset(trace.strings[i] for i in np.unique(trace.columns["op"]))


def _amplification(base: float, changed: float) -> tuple[str, float]:
    """Outcome of a pair that still differs, from the largest parameter difference without
    (``base``) and with (``changed``) the intervention. A change of more than
    ``_AMPLIFIER_FACTOR`` either way, including to or from exactly zero (SGD with a small
    learning rate can leave the weights bitwise equal while the gradients differ), marks an
    amplifier; no parameter difference either way is no effect."""
    ratio = (changed + 1e-300) / (base + 1e-300)
    amplifies = ratio > _AMPLIFIER_FACTOR or ratio < 1 / _AMPLIFIER_FACTOR
    return ("amplifier" if amplifies else "no-effect"), float(ratio)


def _error_line(exc: ScriptError) -> str:
    """The most telling line of a failed run: the exception line of its traceback."""
    lines = [line.strip() for line in exc.output.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or [str(exc)])[-1][:500]


def pair_growth(pair: Pair) -> list[dict]:
    """The growth of the pair's difference per step (``growth``); for a torchrun job, the
    largest over the ranks (differing events summed)."""
    if len(pair.ranks) == 1:
        ((_, a, b),) = pair.ranks
        return growth(a, b, pair.report)
    rows: dict[int, dict] = {}
    for _, a, b in pair.ranks:
        for row in growth(a, b, pair.report):
            merged = rows.setdefault(row["step"], {**row, "differing_events": 0})
            merged["differing_events"] += row["differing_events"]
            merged["exact"] = merged["exact"] and row["exact"]
            for key in ("max_grad_diff", "max_param_diff", "max_state_diff"):
                if row[key] is not None:
                    merged[key] = max(merged[key] or 0.0, row[key])
    return [rows[step] for step in sorted(rows)]


def growth(a: Trace, b: Trace, report: Report) -> list[dict]:
    """Per step: differing events, and the largest difference of gradients, parameters and
    optimizer state after the step: exact from the runs' snapshots where they were taken
    (``exact``: true), else lower bounds from the trace's stats."""
    if not report.compared_events:
        return []
    b, _ = analysis.aligned(a, b)  # B in A's event numbering (unpaired events: copies of A's)
    ca, cb = a.columns, b.columns
    event = a.out_event
    differs = ca["out_fp"] != cb["out_fp"]
    bound = analysis.difference_bounds(a, b, slice(None))
    bound = np.where(differs, np.nan_to_num(bound), 0.0)
    steps = ca["step"][event]
    phases = ca["phase"][event]
    result = []
    for step in np.unique(ca["step"]):
        in_step = steps == step
        events = len(np.unique(event[in_step & differs]))
        grads = bound[in_step & (phases == PHASES.index("backward"))]
        params = bound[in_step & (phases == PHASES.index("optimizer"))]
        row = {
            "step": int(step),
            "differing_events": events,
            "max_grad_diff": float(grads.max()) if len(grads) else 0.0,
            "max_param_diff": float(params.max()) if len(params) else 0.0,
            "max_state_diff": None,
            "exact": False,
        }
        exact = snapshots.max_differences(_snapshot(a, step), _snapshot(b, step))
        if exact is not None:
            row.update(
                max_grad_diff=exact["grad"],
                max_param_diff=exact["param"],
                max_state_diff=exact["state"],
                exact=True,
            )
        result.append(row)
    return result


def _snapshot(trace: Trace, step: int) -> Path:
    return Path(trace.path).with_suffix(".steps") / f"step-{int(step)}.pt"


def _final_growth(rows: list[dict], steps: int) -> float:
    """The largest parameter/state difference bound up to ``steps`` steps."""
    values = [r["max_param_diff"] for r in rows if r["step"] < steps]
    return max(values, default=0.0)


def _verdict(report: Report) -> tuple[str, str | None]:
    first = report.first_divergence
    where = f"{first.module or '(no module)'}, {first.phase}, step {first.step}"
    cause = f"{first.op} in {where} ({first.kind})"
    fixes = [c["intervention"] for c in report.confirmations if c["outcome"] == "fixes"]
    if not fixes:
        return cause, None
    from bisector.confirm.interventions import get

    best = min(fixes, key=lambda n: _PREFERENCE.index(n) if n in _PREFERENCE else len(_PREFERENCE))
    line = f" (at {first.location})" if first.location else ""
    return cause, f"{get(best).fix}{line}"
