"""A reproducibility gate for a project's own tests (pytest or any test runner).

    from bisector.testing import assert_reproducible

    def test_training_is_reproducible(tmp_path):
        assert_reproducible(train_two_steps, steps=2, workdir=tmp_path)

``assert_reproducible`` runs a function twice in this process and compares every op;
``assert_script_reproducible`` runs a script twice in fresh processes (as ``bisector find``), so it
also catches what differs between processes (unseeded generators, hash seeds). Both raise an
AssertionError whose message is the report's headline: the op, module, phase, step and line.

Installed with bisector, a pytest plugin (bisector/pytest_plugin.py) also gives the fixture
``bisector_gate``: the same two functions with their traces kept in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bisector import analysis
from bisector.api import FindOptions, find
from bisector.capture.recorder import Recorder, RecordOptions, StopRun
from bisector.report import Report
from bisector.runner import RunOptions
from bisector.trace import load
from bisector.words import counted


def assert_reproducible(
    fn: Callable[[], object], steps: int | None = 2, workdir: str | os.PathLike | None = None
) -> Report:
    """Run ``fn`` twice in this process, recording every op, and fail if the runs differ.

    ``fn`` must make its own fresh start each time (build the model, seed, load the data):
    the gate checks that the same start gives the same result.

    Args:
        fn: the training to check, e.g. two steps of the real loop.
        steps: stop each run after this many optimizer steps (None: let ``fn`` return).
        workdir: where to keep the two traces (default: a new temporary folder, removed when
            the runs are identical and kept when they differ: the message names it).

    Returns:
        The report, when the runs are bitwise identical.

    Raises:
        AssertionError: the runs differ; the message names the first source and the traces.
    """
    __tracebackhide__ = True  # pytest shows the test's line, not ours
    if workdir is None:
        with _kept_on_failure() as folder:
            return assert_reproducible(fn, steps, folder)
    workdir = Path(workdir)
    traces = []
    for name in ("a", "b"):
        path = workdir / f"{name}.trace"
        try:
            with Recorder(path, RecordOptions(steps=steps, exit_on_stop=True)):
                fn()
        except StopRun:
            pass
        traces.append(load(path))
    report = analysis.compare(traces[0], traces[1])
    if not report.reproducible:
        raise AssertionError(headline(report, [str(workdir / "a.trace"), str(workdir / "b.trace")]))
    return report


def assert_script_reproducible(
    script: str | os.PathLike,
    args: tuple[str, ...] = (),
    steps: int = 2,
    workdir: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> Report:
    """Run a training script twice in fresh processes (``bisector find --no-confirm``) and fail
    if the runs differ.

    Args:
        script: the training script.
        args: its arguments.
        steps: optimizer steps to compare.
        workdir: where to keep the traces (default: a new temporary folder, removed when the
            runs are identical and kept when they differ; never the current folder).
        timeout: stop a run that takes longer than this many seconds.

    Raises:
        AssertionError: the runs differ; the message names the first source and the traces.
        ScriptError: the script failed (its output is in the error).
    """
    __tracebackhide__ = True
    if workdir is None:
        with _kept_on_failure() as folder:
            return assert_script_reproducible(script, args, steps, folder, timeout)
    options = FindOptions(
        workdir=str(workdir) if workdir is not None else None,
        run=RunOptions(timeout=timeout),
    )
    report = find(script, args, steps=steps, options=options)
    if not report.reproducible:
        raise AssertionError(headline(report, [run.trace for run in report.runs]))
    return report


@contextlib.contextmanager
def _kept_on_failure():
    """A new temporary folder, removed unless the block raised (its traces are evidence)."""
    folder = tempfile.mkdtemp(prefix="bisector-gate-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def headline(report: Report, traces: list[str]) -> str:
    """One paragraph: what differs first, where, how much, and how to look closer."""
    first = report.first_divergence
    if report.verdict == "inconclusive":
        reasons = "; ".join(report.evidence.get("reasons") or [])
        return f"runs are not shown reproducible (inconclusive): {reasons}"
    if first is None:
        what = f"{report.differing_events} of {report.compared_events} events differ"
    else:
        where = f"{first.module or '(no module)'}, {first.phase}, step {first.step}"
        if first.rank:
            where += f", rank {first.rank}"
        size = "" if first.max_abs_diff is None else f"; max |A-B| >= {first.max_abs_diff:.3g}"
        what = f"first source: {first.op} in {where} ({first.kind}) at {first.location}{size}"
    others = len(report.sources) - 1
    more = f"; {counted(others, 'more source')}" if others else ""
    look = f"bisector diff {traces[0]} {traces[1]}" if len(traces) == 2 else "bisector diff"
    return f"runs are not bitwise identical: {what}{more}. See: {look}"


class Gate:
    """The ``bisector_gate`` fixture: the two assertions, traces kept under ``workdir``."""

    def __init__(self, workdir: Path):
        self._workdir = workdir
        self._count = 0

    def _next(self) -> Path:
        self._count += 1
        return self._workdir / f"bisector-{self._count}"

    def assert_reproducible(self, fn: Callable[[], object], steps: int | None = 2) -> Report:
        __tracebackhide__ = True
        return assert_reproducible(fn, steps, self._next())

    def assert_script_reproducible(self, script, args=(), steps: int = 2, **kwargs) -> Report:
        __tracebackhide__ = True
        return assert_script_reproducible(script, args, steps, self._next(), **kwargs)
