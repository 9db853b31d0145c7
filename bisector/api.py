"""The public API: find, record, watch and diff. Returns objects and never prints."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bisector import analysis, digests, workdirs
from bisector.analysis.evidence import unstepped_reason
from bisector.analysis.modules import first_module_source
from bisector.confirm import ConfirmOptions, check_kernel_claims, confirm
from bisector.errors import InternalError, MismatchError, ScriptError, TraceError
from bisector.pairs import Pair, diff_jobs, digest_pair, job_files, record_pair
from bisector.report import Level, ObserverCheck, Report
from bisector.runfiles import SNAPSHOT_SUFFIX, RunFiles
from bisector.runner import RunOptions, check_script, run_recorded
from bisector.schema import is_leaf
from bisector.trace import load
from bisector.words import counted

if TYPE_CHECKING:  # the recorder's modules load torch: imported where used, so that `find` and
    # `diff` of traces never wait for torch in this (the parent) process
    import torch

    from bisector.capture.digester import Watch
    from bisector.capture.recorder import Recorder


@dataclass(frozen=True)
class FindOptions:
    """Options of ``find``.

    Attributes:
        workdir: folder for the two traces and the runs' logs (default: a new folder under
            ``.bisector/`` in the working folder).
        run: how each run is made (interpreter, timeout, echo of the script's output).
        confirm: confirm the cause (replays, intervention pairs, verdict); None: do not.
        ladder: bisect over steps first: a pair of runs with step digests only finds the first
            step that differs, then only that step's ops are recorded. None: when more than
            ``LADDER_FROM`` steps are asked for (or all of them).
        check_observer: also run the script once without recording and compare its training
            state with the recorded run A's (``report.observer``): did recording change
            anything?
    """

    workdir: str | None = None
    run: RunOptions = RunOptions()
    confirm: ConfirmOptions | None = None
    ladder: bool | None = None
    check_observer: bool = False


# ``find`` over more steps than this first looks for the first differing step with digests.


def find(
    script: str | os.PathLike,
    args: tuple[str, ...] | list[str] = (),
    steps: int | None = 2,
    options: FindOptions | None = None,
) -> Report:
    """Run a script twice, each in a fresh process, record both runs and compare them.

    Args:
        script: path of the training script.
        args: its command-line arguments.
        steps: optimizer steps to record per run (top-level forward calls when the script
            has no optimizer; past them until every optimizer has stepped, at most
            ``schema.MORE_STEPS_FOR_OPTIMIZERS`` more); None records the whole script.
        options: see FindOptions.

    Returns:
        The Report; ``report.reproducible`` is True if both runs were bitwise identical.

    Raises:
        ScriptError: the script is missing, does not parse, fails, or records no op.
        Interrupted: Ctrl-C; the traces recorded so far are kept in the work folder.

    Example:
        >>> report = bisector.find("train.py", steps=2)
        >>> report.first_divergence.op
        'aten.index_put_.default'
    """
    options = options or FindOptions()
    check_script(script)
    if options.confirm is not None and options.confirm.fix:  # proven over every step asked
        options = replace(options, confirm=replace(options.confirm, fix_steps=steps))
    args = tuple(args)
    made = not options.workdir
    workdir = Path(options.workdir) if options.workdir else workdirs.new_workdir(script, args)
    launch = options.run.launch
    ladder = options.ladder
    if ladder is None:
        ladder = steps is None or steps > digests.LADDER_FROM
    if launch is not None and launch.nnodes > 1:
        report = _find_on_node(script, args, replace(options.run, steps=steps), options, workdir)
    elif ladder:
        report = _find_by_ladder(script, args, steps, options, workdir)
    else:
        report = _find_ops(script, args, replace(options.run, steps=steps), options, workdir)
    report.notes += _fewer_steps(report, steps)
    if made:
        workdirs.note_result(workdir, _headline(report), report.cause)
    return report


def _headline(report: Report) -> str:
    if report.reproducible:
        return "reproducible"
    first = report.first_divergence
    if first is None:
        return report.verdict or "diverged"
    return f"diverged: {first.op} in {first.module or '(no module)'} ({first.kind})"


def _fewer_steps(report, steps: int | None) -> list[str]:
    """A note when the script ended on its own before the steps asked for."""
    if not steps or not report.runs:
        return []
    done = max(run.steps for run in report.runs)
    ended = all(run.status == "complete" for run in report.runs)
    if not ended or done >= steps or done == 0:
        return []
    return [
        f"the script ended after {counted(done, 'optimizer step')}, fewer than the {steps} asked "
        "for (--steps): it was compared over those it ran (its own arguments set how many it "
        "trains)"
    ]


def _find_ops(script, args, run: RunOptions, options: FindOptions, workdir: Path) -> Report:
    """Record every op of both runs (from ``run.start_step``), compare, confirm if asked.
    A torchrun job (``run.launch``) is recorded and compared rank by rank."""
    # snapshots: for the exact growth of the difference, and for the observer check
    run = replace(run, snapshots=options.confirm is not None or options.check_observer)
    pair = record_pair(script, args, workdir, run)
    report = pair.report
    if options.check_observer:
        report.observer = _check_observer(script, args, run, workdir, pair)
    if options.confirm is not None:
        # (the same ops recorded as in the pair: a replay finds its op by its index)
        confirm_run = replace(options.confirm.run, start_step=run.start_step, inside=run.inside)
        confirm_options = replace(options.confirm, run=confirm_run)
        report = confirm(script, args, pair, workdir, confirm_options)
    else:  # a kernel claim is checked in any case: a few replays of the op
        checking = replace(run, echo=False, snapshots=False)
        report = check_kernel_claims(script, args, report, workdir, checking)
    return report


def _find_on_node(script, args, run: RunOptions, options: FindOptions, workdir: Path) -> Report:
    """``find`` on one node of a job of several: the same command runs on every node, so
    every node must start the same jobs. Runs A and B (and the observer's plain run) are the
    same on every node; the ladder's second level, replays and intervention pairs depend on
    what this node's ranks found, so they are not made."""
    options = replace(options, confirm=None)
    run = replace(run, snapshots=options.check_observer)
    pair = record_pair(script, args, workdir, run)
    report = pair.report
    if options.check_observer:
        report.observer = _check_observer(script, args, run, workdir, pair)
    assert run.launch is not None  # (only a job of several nodes comes here)
    ranks = run.launch.ranks()
    which = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
    report.notes.append(
        f"one node of {run.launch.nnodes}: {which} compared, every op of "
        "the steps asked for; no ladder, replays or pairs with interventions (each node would "
        "choose its own next jobs, and the nodes' jobs must match). To compare every rank, "
        "collect the nodes' traces on one machine and `bisector diff` them (docs/distributed.md)"
    )
    return report


def _check_observer(script, args, run: RunOptions, workdir: Path, pair: Pair) -> ObserverCheck:
    """Run the script once without recording, as many steps as run A recorded, and compare
    the training state after the last step with run A's snapshot of it (every rank's, for a
    torchrun job)."""
    from bisector.capture import snapshots
    from bisector.runner import run_plain

    report = pair.report
    taken = {}
    for rank, trace in pair.traces_a().items():
        files = RunFiles(Path(trace.path))
        numbers = files.snapshot_steps()
        if not numbers:
            return {"checked": False, "why": "run A saved no training state (no optimizer step)"}
        taken[rank] = (files, numbers)
    steps = min(numbers[-1] for _, numbers in taken.values()) + 1
    job = run.launch is not None
    plain = workdir / f"plain{SNAPSHOT_SUFFIX}"
    plain = RunFiles.per_rank(plain).output if job else plain
    run_plain(script, args, plain, replace(run, steps=steps, start_step=0, snapshots=False))
    compared = {}
    for rank, (files, _) in taken.items():
        mine = RunFiles(plain).of_rank(rank).output
        if not mine.exists():
            why = "the plain run saved no training state" + (f" on rank {rank}" if job else "")
            return {"checked": False, "why": why}
        compared[rank] = snapshots.compare_in_order(mine, files.snapshot(steps - 1))
    result: ObserverCheck = {
        "checked": True,
        "steps": steps,
        "equal": all(c["equal"] for c in compared.values()),
        "tensors": sum(c["tensors"] for c in compared.values()),
        "differing": sum(c["differing"] for c in compared.values()),
        "max_abs_diff": max(c["max_abs_diff"] for c in compared.values()),
    }
    if job:
        result["ranks"] = compared
    # compiled code that ran eagerly under the recorder (a torch without the boundary)
    footer = next(iter(pair.traces_a().values())).footer
    compiled = "torch.compile" in (footer.get("modules") or []) and not footer.get("compiled_calls")
    ranks = f", on each of {len(compared)} ranks," if job else ""
    differ = [rank for rank, c in compared.items() if not c["equal"]]
    where = f" (on rank {', '.join(map(str, differ))})" if job and differ else ""
    if result["equal"]:
        result["verdict"] = (
            f"recording changed nothing: after {counted(steps, 'step')}{ranks} a plain run's "
            "parameters, "
            "gradients and optimizer state are bitwise those of the recorded run"
        )
    elif report.reproducible and compiled:
        result["verdict"] = (
            f"a plain run differs ({result['differing']} of {result['tensors']} tensors{where}, "
            f"max |A-B| {result['max_abs_diff']:.3g}): it ran torch.compile'd code, the recorded "
            "runs ran it eagerly; the two recorded runs agree"
        )
    elif report.reproducible:
        result["verdict"] = (
            f"recording changed the numbers: {result['differing']} of {result['tensors']} "
            f"tensors{where} differ from a plain run (max |A-B| {result['max_abs_diff']:.3g}) "
            "while both recorded runs agree; please report this to bisector"
        )
    else:
        result["verdict"] = (
            "inconclusive: a plain run differs from the recorded one, but the script is not "
            "reproducible by itself either"
        )
    report.notes.append(f"observer check: {result['verdict']}")
    return result


def _find_by_ladder(script, args, steps: int | None, options: FindOptions, workdir: Path):
    """Digests of every step first; then every op of the first step that differs only."""
    run = replace(options.run, steps=steps)
    started = time.perf_counter()
    runs, compared = digest_pair(script, args, workdir, run)
    if not compared.steps_compared:  # no optimizer stepped: there are no steps to bisect
        report = _find_ops(script, args, run, options, workdir)
        report.notes.append("no optimizer step was seen, so every op was recorded at once")
        return report
    level: Level = {
        "level": "digests",
        "steps": f"0-{compared.steps_compared - 1} (values only)",
        "found": _digest_finding(compared),
        "seconds": round(time.perf_counter() - started, 2),
        "first_step": compared.first_step,
        "first_values": compared.first[:20],
    }
    if compared.reproducible:
        report = Report(reproducible=True, first_divergence=None, sources=[], runs=runs)
        report.verdict = "reproducible"
        report.evidence = {"level": "digests", "optimizer_steps": compared.steps_compared}
        if compared.unstepped:  # (see analysis/evidence.py)
            report.reproducible, report.verdict = False, "inconclusive"
            report.evidence["reasons"] = [unstepped_reason(compared.unstepped)]
        report.environment, report.notes = compared.environment, compared.notes
        report.growth, report.levels = compared.growth, [level]
        return report
    step = compared.first_step
    assert step is not None  # (the digests differ)
    levels: list[Level] = [level]
    inside = None
    if run.launch is None:  # (a torchrun job goes from digests to ops)
        started = time.perf_counter()
        source, found = _module_rung(script, args, replace(run, steps=step + 1), step, workdir)
        # No module found (the module calls of a graph built before this step were not seen:
        # a GAN's generator output): the owner of the first differing gradient, if the digests
        # name one, is scoped first; every op if the source is not inside it.
        owner = _owner_of_first_value(compared) if source is None else None
        if source is None:
            found += (
                f"; {owner} holds the first differing value: its ops are recorded first"
                if owner
                else ": every op is recorded"
            )
        levels.append(
            {
                "level": "modules",
                "steps": f"{step} (module inputs and outputs)",
                "found": found,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        inside = source.module if source is not None else owner
    # Ops of the module found, else every op of the step; then of every step up to it. A
    # source that shows in some runs only (a race, a thread count) may not show in this pair
    # where it showed in the digests' pair, or show a step earlier: a value read from before
    # the recorded steps (a leaf) that differs sends the ladder back to step 0, and a pair that
    # agrees from step 0 is recorded once more before the ladder gives up.
    tries = [(step, inside)] if inside else []
    tries += [(start, None) for start in ((step, 0) if step else (0,))]
    tries.append(tries[-1])
    for number, (start, scope) in enumerate(tries):
        again = number and tries[number - 1] == (start, scope)
        started = time.perf_counter()
        recorded_run = replace(run, steps=step + 1, start_step=start, inside=scope)
        report = _find_ops(script, args, recorded_run, options, workdir)
        recorded = f"{start}-{step}" if start < step else str(step)
        levels.append(
            {
                "level": "ops",
                "steps": f"{recorded} ({f'ops of {scope}' if scope else 'every op'})"
                + (", again" if again else ""),
                "found": _op_finding(report),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        if _found_in_scope(report) if scope or start else not report.reproducible:
            break
    else:
        if report.reproducible:  # the digests differ: these runs' agreement proves nothing
            _did_not_recur(report, compared)
    report.levels = levels
    report.notes = compared.notes + report.notes
    return report


def _did_not_recur(report: Report, compared: digests.DigestReport) -> None:
    """The digests' pair differed but two recorded pairs agree from step 0: the verdict is
    inconclusive, never reproducible."""
    report.reproducible = False
    report.verdict = "inconclusive"
    report.evidence["reasons"] = [
        f"the two runs of the digests differed ({_digest_finding(compared)}) but two recorded "
        "pairs were bitwise identical: the source shows in some runs only (a race, a thread "
        "count, load); run find again, or compare more steps with --steps"
    ]


def _module_rung(script, args, run: RunOptions, step: int, workdir: Path):
    """Record the module calls of ``step`` in two runs (``a.modules.trace``, ``b.modules
    .trace``): (the first module whose inputs are equal and outputs differ or None, what the
    rung found, in words)."""
    rung = replace(run, start_step=step, modules_only=True, snapshots=False)
    try:
        _, a = run_recorded(script, args, workdir / "a.modules.trace", rung, name="A")
        _, b = run_recorded(script, args, workdir / "b.modules.trace", rung, name="B")
    except ScriptError as exc:  # (module hooks can break a script: in-place on a hooked output)
        lines = [line for line in (exc.output or str(exc)).splitlines() if line.strip()]
        why = lines[-1].strip().split(". ")[0][:160] if lines else "the script failed"
        return None, f"the module hooks broke the script ({why})"
    except InternalError as exc:  # a bug of ours at this level (Dynamo tracing our hooks, say)
        why = str(exc).splitlines()[0][:160]
        return None, f"bisector failed at this level ({why})"
    source = first_module_source(a, b)
    if source is None:
        return None, "no module call has equal inputs and differing outputs"
    return source, source.describe()


def _owner_of_first_value(compared: digests.DigestReport) -> str | None:
    """The module holding the parameter whose gradient or value the digests found differing
    first (``G.table``: ``G``; ``layers.0.fc.weight``: ``layers.0.fc``), the module paths being
    the trace's; None where a loss or a batch differs first, or the parameter is a lone root's
    own (its path has no module part) or unnamed."""
    values = [v for v in compared.first if v["kind"] != "rng"]
    if not values or values[0]["kind"] not in ("grad", "param"):
        return None
    return digests.owning_module(values[0]["name"])


def _found_in_scope(report: Report) -> bool:
    """The ops of one module show where the difference starts: an op, not a value read from
    outside the module (a leaf) that differs already."""
    first = report.first_divergence
    return first is not None and not is_leaf(first.op)


def _digest_finding(compared: digests.DigestReport) -> str:
    if compared.reproducible:
        return f"all {counted(compared.steps_compared, 'step')} bitwise identical"
    values = [v for v in compared.first if v["kind"] != "rng"]
    first = values[0]
    kinds: dict[str, int] = {}
    for value in values:
        kinds[value["kind"]] = kinds.get(value["kind"], 0) + 1
    spread = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    ranks = compared.first_ranks or (
        [compared.first_rank] if compared.first_rank is not None else []
    )
    on = f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}" if ranks else ""
    found = f"step {compared.first_step}: {first['kind']} {first['name']} differs first{on}"
    found += f" ({spread})"
    generators = [v["name"] for v in compared.first if v["kind"] == "rng"]
    if generators:
        found += f"; generator states differ: {', '.join(generators)}"
    return found


def _op_finding(report: Report) -> str:
    first = report.first_divergence
    if first is None:
        return "these ops are bitwise identical"
    on = f", rank {first.rank}" if len(report.runs) > 2 else ""  # a torchrun job
    return f"{first.op} in {first.module or '(no module)'}, {first.phase}, step {first.step}{on}"


def diff(path_a: str | os.PathLike, path_b: str | os.PathLike):
    """Compare two finished runs from what they left: traces, digest files or checkpoints.

    The kind of each file is read from its content, not its name. A torchrun job's files are
    named as ``record`` was given them: ``a.trace`` stands for ``a.rank0.trace``,
    ``a.rank1.trace``, ... (collected from every node), compared rank by rank.

    Returns:
        A Report (two traces), a DigestReport (two digest files, from ``watch`` or ``find``)
        or a CheckpointReport (two ``torch.save``'d state dicts or safetensors files).

    Raises:
        TraceError: a file is missing, corrupt, of an unknown format version, or of no known kind.
        MismatchError: the files are of different kinds, or cannot be compared.
    """
    jobs = job_files(Path(path_a)), job_files(Path(path_b))
    if jobs[0] or jobs[1]:  # a.trace for a.rank0.trace, a.rank1.trace, ...: two torchrun jobs
        if not (jobs[0] and jobs[1]):
            missing = path_a if not jobs[0] else path_b
            raise TraceError(f"{missing} is neither a file nor the name of a job's rank files")
        return diff_jobs(*jobs)
    kinds = [_kind_of(Path(path_a)), _kind_of(Path(path_b))]
    if kinds[0] != kinds[1]:
        raise MismatchError(
            f"{path_a} is {_KIND_NAMES[kinds[0]]} and {path_b} is {_KIND_NAMES[kinds[1]]}: "
            "compare two files of the same kind"
        )
    if kinds[0] == "trace":
        return analysis.compare(load(path_a), load(path_b))
    if kinds[0] == "digests":
        return digests.compare(digests.load(path_a), digests.load(path_b))
    from bisector.checkpoint import diff_checkpoints

    return diff_checkpoints(path_a, path_b)


_KIND_NAMES = {"trace": "a trace", "digests": "a digest file", "checkpoint": "a checkpoint"}


def _kind_of(path: Path) -> str:
    """ "trace", "digests" or "checkpoint", from the first bytes of the file."""
    from bisector.records import read_bytes
    from bisector.trace import MAGIC as TRACE_MAGIC

    first = read_bytes(path, "file", len(TRACE_MAGIC))
    if first == TRACE_MAGIC:
        return "trace"
    if first == digests.MAGIC:
        return "digests"
    from bisector.checkpoint import sniff_checkpoint  # (imports torch: 1.5 s)

    # A zip archive that is not readable still goes to the checkpoint loader: it says why.
    if first.startswith(b"PK\x03\x04") or sniff_checkpoint(path) is not None:
        return "checkpoint"
    if path.suffix == ".trace":
        raise TraceError(f"{path} is not a bisector trace (record one with `bisector record`)")
    raise TraceError(
        f"{path} is neither a bisector trace, a digest file nor a checkpoint "
        "(torch.save'd state dict or .safetensors)"
    )


def watch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    path: str | os.PathLike,
    every: int = 1,
) -> Watch:
    """Write step digests of a training loop: per optimizer step, fingerprints of the batch,
    loss, parameters, gradients, optimizer state, buffers and generator states.

    Cheap enough to leave on (see docs/postmortem.md for the measured cost and bytes per
    step), and crash-safe: the file is append-only and reads up to the last complete step.
    Compare two runs' files with ``bisector diff A B``.

    Args:
        model: the model whose forward calls give the batch and whose parameters are named.
        optimizer: the optimizer whose steps are the steps; None: each forward call of the
            model is a step (inference).
        path: the digest file to write.
        every: digest one step in ``every``.

    Returns:
        The Watch; use it as a context manager, or call ``close()`` when training ends.

    Example:
        >>> with bisector.watch(model, optimizer, "run-a.digests"):
        ...     train()
    """
    from bisector.capture.digester import Watch

    return Watch(model, optimizer, path, every).start()


def record(path: str | os.PathLike, steps: int | None = None) -> Recorder:
    """Record the code run inside a ``with`` block into a trace file.

    Args:
        path: the trace file to write.
        steps: stop recording after this many optimizer steps; the script goes on.

    Example:
        >>> with bisector.record("run.trace", steps=2):
        ...     train()
    """
    from bisector.capture.recorder import Recorder, RecordOptions

    return Recorder(path, RecordOptions(steps=steps))
