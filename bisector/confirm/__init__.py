"""Confirm a cause: replay the source ops in isolation, rerun the pair with suspects swapped.

``confirm`` takes the report of a plain pair and adds to it: replays of the first sources (is
the op nondeterministic by itself?), one pair of runs per applicable intervention (which change
makes the runs identical, which only changes how fast the difference grows), the growth of the
difference per step, and a verdict: the cause, the evidence, and the smallest fix.
"""

from __future__ import annotations

import json
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np

from bisector import analysis
from bisector.confirm import effects
from bisector.confirm.interventions import (
    Intervention,
    Place,
    RunFacts,
    Situation,
    child_env,
    choose,
    line_text,
)
from bisector.confirm.replay import Replay, replay
from bisector.digests import merge_growth
from bisector.errors import InternalError, ScriptError
from bisector.pairs import Pair, record_pair
from bisector.report import Confirmation, FixCheck, GrowthRow, Report, Source
from bisector.runfiles import RunFiles, captured_inputs
from bisector.runner import RunOptions, run_ranks, run_recorded
from bisector.schema import COMPILED_PREFIX
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


@dataclass(frozen=True)
class ConfirmOptions:
    """How a cause is confirmed.

    Attributes:
        replays: times each source op is re-run on its saved inputs, at least (see
            ``replay.MORE_RUNS``).
        forced: interventions to try even where they do not seem to apply.
        only_forced: try only the forced interventions.
        run: how each run is made (interpreter, timeout).
        jobs: pairs of runs made at the same time at most (None: one per GPU when the runs
            used CUDA, else one per 4 CPU cores; torchrun jobs one at a time).
        fix: write the verdict's fix as a patch and prove it (``prove_fix``).
        fix_steps: optimizer steps the patched script is checked over (None: all of them).
    """

    replays: int = 20
    forced: tuple[str, ...] = ()
    only_forced: bool = False
    run: RunOptions = RunOptions()
    jobs: int | None = None
    fix: bool = False
    fix_steps: int | None = None


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
    first_step = report.first_divergence.step
    place = _place(script, pair, report)
    per_gpu = _pairs_per_gpu(pair)
    chosen = _chosen(pair, report, options)
    side_by_side = len(_slots(options, place, len(chosen) + 1, per_gpu)) > 1

    def replays() -> None:
        kinds = ("kernel", "rng")
        replayed = _replays(script, args, report.sources, kinds, workdir, first_step + 1, options)
        report.replay = [vars(r) for r in replayed]
        check_claims(report)

    # A second plain pair measures the baseline's own spread from pair to pair: made beside
    # the others where pairs run side by side, else afterwards and only if a pair differs.
    # Pairs run a few steps past the first differing one: enough to fit how fast a difference
    # grows (see effects.py).
    tasks: list[Intervention | None] = [*chosen, None] if chosen and side_by_side else [*chosen]
    window = first_step + effects.GROWTH_STEPS
    slots = _slots(options, place, len(tasks), per_gpu)
    if side_by_side:  # the replays' capture run goes beside the pairs
        with ThreadPoolExecutor(1) as aside:
            replaying = aside.submit(replays)
            entries = _pairs(script, args, tasks, report, workdir, window, options, slots)
            replaying.result()
        # a replay that contradicts a kernel claim changes the sources: what else applies
        done = {e["intervention"] for e in entries}
        more = [i for i in _chosen(pair, report, options) if i.name not in done]
        entries += _pairs(script, args, more, report, workdir, window, options, slots)
    else:
        replays()
        chosen = _chosen(pair, report, options)
        entries = _pairs(script, args, chosen, report, workdir, window, options, slots)
    again = next((e for e in entries if e["intervention"] is None), None)
    report.confirmations = [e for e in entries if e["intervention"] is not None]
    # An unconfirmed first cause (equal inputs, other outputs, one result in its replays) may
    # not recur: a second plain pair tells whether an identical pair with a change proves
    # anything.
    unproven = report.first_divergence.kind == "unconfirmed"
    if again is None and (unproven or any(e["outcome"] == "" for e in report.confirmations)):
        again = _pair(script, args, None, report, workdir, window, options)
    if again is not None:
        report.growth_again = again.get("growth") or []
        if again["reproducible"] is not None:
            report.recurred = not again["reproducible"]
    for entry in report.confirmations:
        if entry["outcome"] == "":  # still differs: what the change does to the growth
            _measure_effect(entry, [report.growth, report.growth_again], first_step)
    if report.diverged_once:
        _did_not_recur(report)
    report.cause, report.fix = _verdict(report, place)
    if options.fix:
        checking = replace(options.run, steps=options.fix_steps, start_step=0, inside=None)
        report.fix_check = prove_fix(script, args, report, workdir, checking, place)
    return report


def _did_not_recur(report: Report) -> None:
    """The first pair differed at an op that its replays could not show nondeterministic, and
    a second plain pair was identical: a pair made identical by a change says nothing (it
    would have been identical without it), so no change is credited."""
    for entry in report.confirmations:
        if entry["outcome"] == "fixes":
            entry["outcome"] = "inconclusive"
    report.notes.append(
        "the divergence did not recur: a second plain pair of runs was bitwise identical, and "
        "the first cause gave one result in every replay. Something that happens in some runs "
        "only made the first pair differ (a library that chooses its code path or thread "
        "count once per process, a cache filled by the first run, load on the machine); no "
        "tried change can be credited. Run find again to see how often it happens, and "
        "compare the runs' environments"
    )


def _chosen(pair: Pair, report: Report, options: ConfirmOptions) -> list[Intervention]:
    """The interventions to try on these sources (only the forced ones with ``only_forced``)."""
    if options.only_forced:
        from bisector.confirm.interventions import get

        return [get(name) for name in options.forced]
    return choose(_situation(pair, report.sources), options.forced)


def _pairs(script, args, chosen, report, workdir, steps, options, slots) -> list[Confirmation]:
    """One pair of runs per intervention, as many at a time as there are ``slots`` (see
    ``_slots``); each pair's two runs one after the other, as the plain pair's were."""
    if len(slots) <= 1:
        return [_pair(script, args, i, report, workdir, steps, options) for i in chosen]
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def one(intervention: Intervention | None) -> Confirmation:
        slot = free.get()
        try:
            run = replace(options.run, env=options.run.env + slot)
            mine = replace(options, run=run)
            return _pair(script, args, intervention, report, workdir, steps, mine)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(len(slots)) as pool:
        return list(pool.map(one, chosen))


# CPU cores per pair run at the same time by default (a run uses every core it is given).
_CORES_PER_PAIR = 4


def _slots(options: ConfirmOptions, place: Place, pairs: int, per_gpu: int = 1) -> list[tuple]:
    """Extra environment of each pair that may run at once: ``per_gpu`` pairs per GPU (a pair
    sees only its GPU) when the runs used CUDA, else one per ``_CORES_PER_PAIR`` cores; at
    most ``options.jobs``. A torchrun job's pairs run one at a time (each takes every GPU)."""
    if options.run.launch is not None or pairs <= 1:
        return [()]
    limit = min(options.jobs or pairs, pairs)
    if place.cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = [g for g in visible.split(",") if g] if visible else [str(i) for i in range(_gpus())]
        # round robin: the first pairs spread over the GPUs before any GPU takes a second
        slots = [(("CUDA_VISIBLE_DEVICES", g),) for _ in range(per_gpu) for g in gpus]
        return slots[:limit] or [()]
    cores = os.cpu_count() or 1
    count = options.jobs or max(1, cores // _CORES_PER_PAIR)
    return [()] * max(1, min(count, pairs))


# Pairs that share one GPU at most, when its memory allows: a pair's runs are mostly host work
# (launches, recording), so a few side by side keep a GPU busy.
_MAX_PAIRS_PER_GPU = 4
# Of a GPU's memory, the share that pairs side by side may take together.
_GPU_MEMORY_SHARE = 0.8


def _pairs_per_gpu(pair: Pair) -> int:
    """How many pairs fit on one GPU side by side: by the most memory a run of the plain pair
    held (its allocator's peak), with room to spare, and by the CPU cores (two per pair)."""
    memory = [t.footer.get("cuda_memory") for _, a, b in pair.ranks for t in (a, b)]
    known = [m for m in memory if m is not None]
    if not known or len(known) < len(memory):
        return 1
    peak = max(m["peak_reserved"] for m in known)
    total = min(m["total"] for m in known)
    by_memory = int(total * _GPU_MEMORY_SHARE // max(peak * 1.25, 1))
    by_cores = max(1, (os.cpu_count() or 1) // (2 * max(1, _gpus())))
    return max(1, min(_MAX_PAIRS_PER_GPU, by_memory, by_cores))


def _gpus() -> int:
    """GPUs on this machine (without starting CUDA in this process)."""
    import torch

    return torch.cuda.device_count()


def _place(script, pair: Pair, report: Report) -> Place:
    """Where a fix goes: the script's start, the first source's line, and whether CUDA ran."""
    first = report.first_divergence
    start, text = script_start(script)
    traces = [t for _, a, b in pair.ranks for t in (a, b)]
    cuda = any(
        t.footer.get("cuda_used", bool(t.header.get("versions", {}).get("gpus"))) for t in traces
    )
    a, b = pair.lead()
    draws = analysis.unseeded_draws(a, b)
    unseeded = [{"random": "Python's random"}.get(name, name) for name in draws]
    seeds = [t.footer.get("seeds_at_end", {}).get("torch_initial_seed") for t in (a, b)]
    if None not in seeds and seeds[0] != seeds[1]:
        unseeded.append("torch")
    return Place(
        start=start,
        start_text=text,
        source=first.location if first is not None else "",
        source_kind=first.kind if first is not None else "",
        cuda=cuda,
        unseeded=tuple(unseeded),
        draws=tuple(
            analysis.relative_line(a, line) for sites in draws.values() for line, *_ in sites[:2]
        ),
    )


def script_start(script) -> tuple[str, str]:
    """("train.py:12", its text): the script's first top-level statement after its docstring
    and imports, before which a process-wide switch goes; ("", "") if it cannot be read."""
    import ast

    from bisector.confirm.patches import first_statement

    try:
        source = Path(script).read_text()
        line = first_statement(ast.parse(source))
    except (OSError, SyntaxError, ValueError):
        return "", ""
    lines = source.splitlines()
    if line is None or line > len(lines):
        return "", ""
    return f"{script}:{line}", lines[line - 1].strip()[:80]


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
    inputs = captured_inputs(folder, source.event)
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
        runs, distinct = replayed["runs"], replayed["distinct_results"] or 0
        source.checked = {"how": "replay", "runs": runs, "distinct_results": distinct}
        if distinct > 1:
            source.checked["result"] = "confirmed"
            continue
        source.checked["result"] = "contradicted"
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
    intervention: Intervention | None,
    report: Report,
    workdir: Path,
    steps: int,
    options: ConfirmOptions,
) -> Confirmation:
    """Run both runs with one intervention (None: a second plain pair) and say what it
    changed; the effect on the growth of a pair that still differs is measured afterwards,
    against both plain pairs (``_measure_effect``)."""
    name = intervention.name if intervention is not None else None
    folder = workdir / (name or "again")
    # Every op of the steps, also where the pair that found the source recorded one module's
    # only: "the change makes the runs identical" must rest on the whole step.
    run = replace(
        options.run, steps=steps, echo=False, interventions=(name,) if name else (), inside=None
    )
    if name:  # what the change needs set before the child's Python starts
        run = replace(run, env=run.env + tuple(child_env([name]).items()))
    run = replace(run, snapshots=True)
    entry: Confirmation = {
        "intervention": name,
        "outcome": "",
        "reproducible": None,
        "error": None,
        "first_divergence": None,
        "summary": intervention.summary if intervention is not None else "",
    }
    try:
        intervened = record_pair(script, args, folder, run)
    except ScriptError as exc:
        entry["outcome"], entry["error"] = "fails", _error_line(exc)
        return entry
    paired = intervened.report
    entry["reproducible"] = paired.reproducible
    entry["growth"] = [_curve_row(row) for row in pair_growth(intervened)]
    if intervention is None:
        return entry
    facts = [_facts(trace) for _, a, b in intervened.ranks for trace in (a, b)]
    overrides = [o for f in facts for o in f.notes.get("overrides", [])]
    entry["overrides"] = list({(o["what"], o["line"]): o for o in overrides}.values())
    not_applied = next(filter(None, (intervention.check(f) for f in facts)), None)
    if not_applied is not None:  # the pair says nothing about the change
        entry["outcome"], entry["not_applied"] = "did-not-apply", not_applied
        return entry
    if paired.reproducible:
        entry["outcome"] = "fixes"
        return entry
    first = paired.first_divergence
    entry["first_divergence"] = None if first is None else f"{first.op} ({first.kind})"
    return entry


def _curve_row(row: GrowthRow) -> GrowthRow:
    """A growth row as a pair's curve keeps it."""
    return {
        "step": row["step"],
        "max_grad_diff": row.get("max_grad_diff"),
        "max_param_diff": row.get("max_param_diff"),
        "max_state_diff": row.get("max_state_diff"),
        "exact": bool(row.get("exact")),
    }


def _measure_effect(entry: Confirmation, plain: list[list[GrowthRow]], start: int) -> None:
    """Outcome of a pair that still differs, from its growth against the plain pairs' (see
    effects.py); the numbers it was decided from go on the entry as ``effect``."""
    effect = effects.measure(entry.get("growth") or [], plain, start)
    entry["outcome"] = effect.outcome
    entry["effect"] = vars(effect)
    if entry["intervention"] == "adam-to-sgd":
        entry["explanation"] = effects.adam_explanation(effect, entry.get("first_divergence"))


def _facts(trace: Trace) -> RunFacts:
    """What a run of a pair shows about the intervention applied to it."""
    try:
        notes = json.loads(RunFiles(Path(trace.path)).intervened.read_text())
    except (OSError, ValueError):
        notes = {}
    return RunFacts(ops=_ops(trace), footer=trace.footer, notes=notes)


def _ops(trace: Trace) -> frozenset[str]:
    """Every op name recorded in a trace."""
    return frozenset(trace.strings[i] for i in np.unique(trace.columns["op"]))


def _error_line(exc: ScriptError) -> str:
    """The most telling line of a failed run: the exception line of its traceback."""
    lines = [line.strip() for line in exc.output.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or [str(exc)])[-1][:500]


def pair_growth(pair: Pair) -> list[GrowthRow]:
    """The growth of the pair's difference per step (``growth``); for a torchrun job, the
    largest over the ranks (differing events summed)."""
    per_rank = [growth(a, b, pair.report) for _, a, b in pair.ranks]
    return cast(list[GrowthRow], merge_growth(per_rank, count="differing_events"))


def growth(a: Trace, b: Trace, report: Report) -> list[GrowthRow]:
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
    result: list[GrowthRow] = []
    for step in np.unique(ca["step"]):
        in_step = steps == step
        events = len(np.unique(event[in_step & differs]))
        grads = bound[in_step & (phases == PHASES.index("backward"))]
        params = bound[in_step & (phases == PHASES.index("optimizer"))]
        row: GrowthRow = {
            "step": int(step),
            "differing_events": events,
            "max_grad_diff": float(grads.max()) if len(grads) else 0.0,
            "max_param_diff": float(params.max()) if len(params) else 0.0,
            "max_state_diff": None,
            "exact": False,
        }
        exact = _snapshot_differences(_snapshot(a, step), _snapshot(b, step))
        if exact is not None:
            row["max_grad_diff"], row["max_param_diff"] = exact["grad"], exact["param"]
            row["max_state_diff"], row["exact"] = exact["state"], True
        result.append(row)
    return result


def _snapshot_differences(a: Path, b: Path) -> dict[str, float] | None:
    """The snapshots' largest differences (``snapshots.max_differences``), None where either
    was not taken. Their module loads torch: only where snapshots exist, so that a find that
    takes none never waits for torch in this process."""
    if not (a.exists() and b.exists()):
        return None
    from bisector.capture import snapshots

    return snapshots.max_differences(a, b)


def _snapshot(trace: Trace, step: int) -> Path:
    return RunFiles(Path(trace.path)).snapshot(step)


def best_fix(report: Report) -> str | None:
    """The most targeted intervention that made the runs identical (see ``_PREFERENCE``)."""
    fixes = [c["intervention"] for c in report.confirmations if c["outcome"] == "fixes"]
    if not fixes:
        return None
    return min(fixes, key=lambda n: _PREFERENCE.index(n) if n in _PREFERENCE else len(_PREFERENCE))


def _verdict(report: Report, place: Place) -> tuple[str, str | None]:
    first = report.first_divergence
    assert first is not None  # (confirm runs only for a pair that differs)
    where = f"{first.module or '(no module)'}, {first.phase}, step {first.step}"
    cause = f"{first.op} in {where} ({first.kind})"
    if report.diverged_once:
        return f"{cause}, in the first pair only: a second plain pair was identical", None
    best = best_fix(report)
    if best is None and first.kind == "argument" and (first.built or first.location):
        made = (
            f"builds the module at {first.built}"
            if first.built
            else f"calls it at {first.location}"
        )
        shown = line_text(first.built or first.location)
        return cause, (
            f"no tried change made the runs identical; the argument differs where the script "
            f"{made}" + (f" (`{shown}`)" if shown else "") + ": make what it passes there the "
            "same in both runs (a value drawn from the clock, the process, or an unseeded "
            "generator)"
        )
    if best is None:
        return cause, None
    from bisector.confirm.interventions import get

    return cause, get(best).advice(place)


# Steps timed at least for the cost of a fix (the first, with its warm-up, is not counted).
_TIMED_STEPS = 6


def prove_fix(
    script, args: tuple[str, ...], report: Report, workdir: Path, run: RunOptions, place: Place
) -> FixCheck:
    """``find --fix``: write the verdict's fix as a patch (``fix/fix.patch``, never applied to
    the script), run a pair of the patched script (step digests of every step asked for; every
    op where no optimizer steps), and time a plain run's steps with and without the patch.

    Returns:
        ``report.fix_check``: made (False with why when there is no patch), intervention,
        patch (its file), diff, file, line, reproducible, steps, first_step, first_values,
        step_seconds {before, after} (medians), cost (after / before), notes.
    """
    import statistics

    from bisector.confirm.patches import make_patch
    from bisector.pairs import digest_pair

    name = best_fix(report)
    if name is None:
        return {"made": False, "why": "no tried change made the runs identical"}
    patch = make_patch(name, script, place.cuda, place.unseeded)
    if patch is None:
        return {
            "made": False,
            "intervention": name,
            "why": f"`{name}` is not a switch bisector can write into the script: apply the "
            "fix by hand",
        }
    folder = workdir / "fix"
    folder.mkdir(parents=True, exist_ok=True)
    patch_file = folder / "fix.patch"
    patch_file.write_text(patch.diff)
    patched = folder / Path(script).name
    patched.write_text(patch.patched)
    checking = replace(run, source=str(patched), echo=False, snapshots=False, capture=())
    result: FixCheck = {
        "made": True,
        "intervention": name,
        "patch": str(patch_file),
        "diff": patch.diff,
        "file": str(script),
        "line": patch.line,
        "notes": patch.notes,
    }
    try:
        _, compared = digest_pair(script, args, folder, checking)
        if compared.steps_compared:
            result["reproducible"] = compared.reproducible
            result["steps"] = compared.steps_compared
            result["first_step"] = compared.first_step
            result["first_values"] = compared.first[:5]
        else:  # no optimizer stepped: every op of both runs
            paired = record_pair(script, args, folder, checking).report
            first = paired.first_divergence
            result["reproducible"] = paired.reproducible
            result["steps"], result["events"] = 0, paired.compared_events
            result["first_step"] = None if first is None else first.step
            result["first_values"] = (
                [] if first is None else [{"kind": first.kind, "name": first.op}]
            )
        timing = replace(checking, steps=max(run.steps or 0, _TIMED_STEPS), source=None)
        before = _step_times(script, args, folder / "before", timing)
        after = _step_times(script, args, folder / "after", replace(timing, source=str(patched)))
    except ScriptError as exc:
        result["reproducible"], result["error"] = None, _error_line(exc)
        return result
    entry = next(c for c in report.confirmations if c["intervention"] == name)
    if not result.get("reproducible") and entry.get("overrides"):
        undone = "; ".join(f"`{o['what']}` at {o['line']}" for o in entry["overrides"])
        result["notes"] = [
            *result["notes"],
            f"the script undoes the change later ({undone}); the intervention held against "
            "it, the patch does not: change that line too",
        ]
    if len(before) > 1 and len(after) > 1:
        b, a = statistics.median(before[1:]), statistics.median(after[1:])
        result["step_seconds"] = {"before": round(b, 6), "after": round(a, 6)}
        result["cost"] = round(a / b, 3) if b > 0 else None
    return result


def _step_times(script, args, stem: Path, run: RunOptions) -> list[float]:
    """Each step's wall time in a plain run (rank 0's in a torchrun job)."""
    from bisector.runner import run_step_times

    if run.launch is None:
        return run_step_times(script, args, stem.with_suffix(".json"), run)
    template = stem.parent / f"{stem.name}.rank{{rank}}.json"
    run_step_times(script, args, template, run)
    first = stem.parent / f"{stem.name}.rank{run.launch.ranks()[0]}.json"
    try:
        return [float(t) for t in json.loads(first.read_text())["seconds"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
