"""The public API: find, record, watch and diff. Returns objects and never prints."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bisector import analysis, digests
from bisector.capture.digester import Watch
from bisector.capture.recorder import Recorder, RecordOptions
from bisector.confirm import ConfirmOptions, check_kernel_claims, confirm
from bisector.errors import MismatchError, TraceError
from bisector.report import Report
from bisector.runner import RunOptions, check_script, run_digests, run_ranks, run_recorded
from bisector.trace import load


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
LADDER_FROM = 4


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
            has no optimizer); None records the whole script.
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
    workdir = Path(options.workdir) if options.workdir else _new_workdir()
    args = tuple(args)
    if options.run.launch is not None:
        return _find_ranks(script, args, replace(options.run, steps=steps), options, workdir)
    ladder = options.ladder
    if ladder is None:
        ladder = steps is None or steps > LADDER_FROM
    if ladder:
        return _find_by_ladder(script, args, steps, options, workdir)
    return _find_ops(script, args, replace(options.run, steps=steps), options, workdir)


def _find_ops(script, args, run: RunOptions, options: FindOptions, workdir: Path) -> Report:
    """Record every op of both runs (from ``run.start_step``), compare, confirm if asked."""
    # snapshots: for the exact growth of the difference, and for the observer check
    run = replace(run, snapshots=options.confirm is not None or options.check_observer)
    run_a, trace_a = run_recorded(script, args, workdir / "a.trace", run, name="A")
    run_b, trace_b = run_recorded(script, args, workdir / "b.trace", run, name="B")
    report = analysis.compare(trace_a, trace_b, runs=[run_a, run_b])
    if options.check_observer:
        # compiled code that ran eagerly under the recorder (a torch without the boundary)
        compiled = "torch.compile" in (trace_a.footer.get("modules") or []) and not (
            trace_a.footer.get("compiled_calls")
        )
        report.observer = _check_observer(script, args, run, workdir, report, compiled)
    if options.confirm is not None:
        confirm_run = replace(options.confirm.run, start_step=run.start_step)
        confirm_options = replace(options.confirm, run=confirm_run)
        report = confirm(script, args, report, (trace_a, trace_b), workdir, confirm_options)
    else:  # a kernel claim is checked in any case: a few replays of the op
        checking = replace(run, echo=False, snapshots=False)
        report = check_kernel_claims(script, args, report, workdir, checking)
    return report


def _check_observer(
    script, args, run: RunOptions, workdir: Path, report: Report, compiled: bool
) -> dict:
    """Run the script once without recording, as many steps as run A recorded, and compare
    the training state after the last step with run A's snapshot of it."""
    from bisector.capture import snapshots
    from bisector.runner import run_plain

    taken = sorted((workdir / "a.steps").glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not taken:
        return {"checked": False, "why": "run A saved no training state (no optimizer step)"}
    last = taken[-1]
    steps = int(last.stem.split("-")[1]) + 1
    plain = workdir / "plain.pt"
    run_plain(script, args, plain, replace(run, steps=steps, start_step=0, snapshots=False))
    if not plain.exists():
        return {"checked": False, "why": "the plain run saved no training state"}
    result = {"checked": True, "steps": steps, **snapshots.compare_in_order(plain, last)}
    if result["equal"]:
        result["verdict"] = (
            f"recording changed nothing: after {steps} steps a plain run's parameters, "
            "gradients and optimizer state are bitwise those of the recorded run"
        )
    elif report.reproducible and compiled:
        result["verdict"] = (
            f"a plain run differs ({result['differing']} of {result['tensors']} tensors, max "
            f"|A-B| {result['max_abs_diff']:.3g}): it ran torch.compile'd code, the recorded "
            "runs ran it eagerly; the two recorded runs agree"
        )
    elif report.reproducible:
        result["verdict"] = (
            f"recording changed the numbers: {result['differing']} of {result['tensors']} "
            f"tensors differ from a plain run (max |A-B| {result['max_abs_diff']:.3g}) while "
            "both recorded runs agree; please report this to bisector"
        )
    else:
        result["verdict"] = (
            "inconclusive: a plain run differs from the recorded one, but the script is not "
            "reproducible by itself either"
        )
    report.notes.append(f"observer check: {result['verdict']}")
    return result


def _find_ranks(script, args, run: RunOptions, options: FindOptions, workdir: Path) -> Report:
    """Both runs through torchrun, compared rank by rank (see analysis/ranks.py)."""
    from bisector.analysis.ranks import compare_ranks
    from bisector.analysis.replicas import describe as describe_drift
    from bisector.analysis.replicas import drift

    ranks_a = run_ranks(script, args, workdir / "a.trace", run, name="A")
    ranks_b = run_ranks(script, args, workdir / "b.trace", run, name="B")
    traces_b = {rank: (info, trace) for rank, info, trace in ranks_b}
    if set(traces_b) != {rank for rank, _, _ in ranks_a}:
        raise MismatchError(
            f"run A recorded ranks {[r for r, _, _ in ranks_a]} and run B ranks "
            f"{sorted(traces_b)}: the two runs did not start the same processes"
        )
    pairs, runs = [], []
    for rank, info, trace in ranks_a:
        pairs.append((rank, trace, traces_b[rank][1]))
        runs += [info, traces_b[rank][0]]
    report = compare_ranks(pairs, runs)
    report.replicas = drift({rank: Path(f"{trace.path}.replicas") for rank, _, trace in ranks_a})
    if report.replicas is not None:
        report.notes.insert(0, describe_drift(report.replicas))
    if options.ladder:
        report.notes.append("--ladder is not applied to torchrun jobs yet: every op was recorded")
    if options.check_observer:
        report.notes.append("--check-observer is not applied to torchrun jobs yet")
    # Kernel claims are replayed on the source's rank (a capture job in which that rank saves
    # the op's inputs; the op is replayed in one process).
    checking = replace(run, echo=False, snapshots=False)
    report = check_kernel_claims(script, args, report, workdir, checking)
    if options.confirm is not None and not report.reproducible:
        report.notes.append(
            "pairs of runs with interventions are not made for torchrun jobs yet: try a suspect "
            "by hand, e.g. torch.use_deterministic_algorithms(True)"
        )
    return report


def _find_by_ladder(script, args, steps: int | None, options: FindOptions, workdir: Path):
    """Digests of every step first; then every op of the first step that differs only."""
    run = replace(options.run, steps=steps)
    started = time.perf_counter()
    run_a, a = run_digests(script, args, workdir / "a.digests", run, name="A")
    run_b, b = run_digests(script, args, workdir / "b.digests", run, name="B")
    if not a.steps and not b.steps:  # no optimizer stepped: there are no steps to bisect
        report = _find_ops(script, args, run, options, workdir)
        report.notes.append("no optimizer step was seen, so every op was recorded at once")
        return report
    compared = digests.compare(a, b)
    level = {
        "level": "digests",
        "steps": f"0-{max(a.steps)} (values only)" if a.steps else "none",
        "found": _digest_finding(compared),
        "seconds": round(time.perf_counter() - started, 2),
        "first_step": compared.first_step,
        "first_values": compared.first[:20],
    }
    if compared.reproducible:
        report = Report(reproducible=True, first_divergence=None, sources=[], runs=[run_a, run_b])
        report.verdict = "reproducible"
        report.evidence = {"level": "digests", "optimizer_steps": compared.steps_compared}
        report.environment, report.notes = compared.environment, compared.notes
        report.growth, report.levels = compared.growth, [level]
        return report
    step = compared.first_step
    levels = [level]
    for start in (step, 0) if step else (0,):
        started = time.perf_counter()
        report = _find_ops(
            script, args, replace(run, steps=step + 1, start_step=start), options, workdir
        )
        recorded = f"{start}-{step}" if start < step else str(step)
        levels.append(
            {
                "level": "ops",
                "steps": f"{recorded} (every op)",
                "found": _op_finding(report),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        if not report.reproducible:
            break
    report.levels = levels
    report.notes = compared.notes + report.notes
    return report


def _digest_finding(compared: digests.DigestReport) -> str:
    if compared.reproducible:
        return f"all {compared.steps_compared} steps bitwise identical"
    values = [v for v in compared.first if v["kind"] != "rng"]
    first = values[0]
    kinds: dict[str, int] = {}
    for value in values:
        kinds[value["kind"]] = kinds.get(value["kind"], 0) + 1
    spread = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    found = f"step {compared.first_step}: {first['kind']} {first['name']} differs first ({spread})"
    generators = [v["name"] for v in compared.first if v["kind"] == "rng"]
    if generators:
        found += f"; generator states differ: {', '.join(generators)}"
    return found


def _op_finding(report: Report) -> str:
    first = report.first_divergence
    if first is None:
        return "these ops are bitwise identical"
    return f"{first.op} in {first.module or '(no module)'}, {first.phase}, step {first.step}"


def diff(path_a: str | os.PathLike, path_b: str | os.PathLike):
    """Compare two finished runs from what they left: traces, digest files or checkpoints.

    The kind of each file is read from its content, not its name.

    Returns:
        A Report (two traces), a DigestReport (two digest files, from ``watch`` or ``find``)
        or a CheckpointReport (two ``torch.save``'d state dicts or safetensors files).

    Raises:
        TraceError: a file is missing, corrupt, of an unknown format version, or of no known kind.
        MismatchError: the files are of different kinds, or cannot be compared.
    """
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
    from bisector.checkpoint import sniff_checkpoint
    from bisector.records import read_bytes
    from bisector.trace import MAGIC as TRACE_MAGIC

    first = read_bytes(path, "file", len(TRACE_MAGIC))
    if first == TRACE_MAGIC:
        return "trace"
    if first == digests.MAGIC:
        return "digests"
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
    return Watch(model, optimizer, path, every)


def record(path: str | os.PathLike, steps: int | None = None) -> Recorder:
    """Record the code run inside a ``with`` block into a trace file.

    Args:
        path: the trace file to write.
        steps: stop recording after this many optimizer steps; the script goes on.

    Example:
        >>> with bisector.record("run.trace", steps=2):
        ...     train()
    """
    return Recorder(path, RecordOptions(steps=steps))


def _new_workdir() -> Path:
    base = Path(".bisector")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        candidate = base / (f"run-{stamp}" if i == 0 else f"run-{stamp}-{i}")
        if not candidate.exists():
            candidate.mkdir(parents=True)
            return candidate
    raise RuntimeError("cannot create a work folder under .bisector/")
