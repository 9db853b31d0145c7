"""The public API: find, record and diff. Returns objects and never prints."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bisector import analysis
from bisector.capture.recorder import Recorder, RecordOptions
from bisector.confirm import ConfirmOptions, confirm
from bisector.report import Report
from bisector.runner import RunOptions, check_script, run_recorded
from bisector.trace import load


@dataclass(frozen=True)
class FindOptions:
    """Options of ``find``.

    Attributes:
        workdir: folder for the two traces and the runs' logs (default: a new folder under
            ``.bisector/`` in the working folder).
        run: how each run is made (interpreter, timeout, echo of the script's output).
        confirm: confirm the cause (replays, intervention pairs, verdict); None: do not.
    """

    workdir: str | None = None
    run: RunOptions = RunOptions()
    confirm: ConfirmOptions | None = None


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
    # snapshots: for the exact growth of the difference when the cause is confirmed
    run = replace(options.run, steps=steps, snapshots=options.confirm is not None)
    args = tuple(args)
    run_a, trace_a = run_recorded(script, args, workdir / "a.trace", run, name="A")
    run_b, trace_b = run_recorded(script, args, workdir / "b.trace", run, name="B")
    report = analysis.compare(trace_a, trace_b, runs=[run_a, run_b])
    if options.confirm is not None:
        report = confirm(script, args, report, (trace_a, trace_b), workdir, options.confirm)
    return report


def diff(trace_a: str | os.PathLike, trace_b: str | os.PathLike) -> Report:
    """Compare two saved traces (for example from two machines).

    Raises:
        TraceError: a file is missing, corrupt or of an unknown format version.
        MismatchError: the traces cannot be compared.
    """
    return analysis.compare(load(trace_a), load(trace_b))


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
