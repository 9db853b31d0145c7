"""The child process of a recorded run: runs the user's script as __main__ under a Recorder.

Started by runner.py as ``python -c <boot> --spec JSON`` (or through torchrun as
``-m bisector._child --spec JSON``): what to do is one ``runfiles.ChildSpec``, the files it
writes are named by ``runfiles.RunFiles``.

Exit status: the script's own (0 when stopped after the requested steps), 130 on Ctrl-C,
runfiles.EXIT_SCRIPT_RAISED when the script raised (its traceback, without our frames, is
printed on stderr as Python would print it), runfiles.EXIT_INTERNAL when bisector's own code
failed inside the run (our traceback on stderr; the trace keeps what was recorded).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Literal

import bisector
from bisector.capture.digester import GlobalDigests
from bisector.capture.recorder import InternalFailure, Recorder, RecordOptions, StopRun, ending
from bisector.confirm.interventions import apply_interventions
from bisector.runfiles import (
    EXIT_INTERNAL,
    EXIT_SCRIPT_RAISED,
    EXIT_SETUP_FAILED,
    ChildSpec,
    RunFiles,
)
from bisector.runner import LAUNCH_PYTHONPATH, MODULE_ENV


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) != 2 or argv[0] != "--spec":
        sys.exit("bisector-child: expects --spec JSON (started by bisector, not by hand)")
    spec = ChildSpec.from_json(argv[1])
    script, script_args = spec.script, spec.args

    # Look like `python script.py ARGS`: argv, and the script's folder first on sys.path.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(bisector.__file__)))
    if sys.path and sys.path[0] == package_root:
        sys.path.pop(0)
    launched = os.environ.pop(LAUNCH_PYTHONPATH, None)
    if launched is not None:  # started by torchrun with our folder put on PYTHONPATH
        _restore_pythonpath(launched, package_root)
    rank = os.environ.get("RANK", "0")
    # Under torchrun every rank writes its own files: "{rank}" in a path is this rank.
    spec = spec.for_rank(rank)
    files = RunFiles(Path(spec.main_file or ""))
    # The parent asks the run to stop with SIGINT (Ctrl-C, --timeout, a hung job): a process
    # started from a background job inherits SIGINT ignored, and would never finish its trace.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if launched is not None:
        # torchrun stops the other ranks with SIGTERM when one fails: finish their traces.
        signal.signal(signal.SIGTERM, _terminated)
    # `find -m package.module`: run it as `python -m` does (the working folder first on
    # sys.path, argv[0] the module's file, its package imported first).
    module = os.environ.pop(MODULE_ENV, None)
    first = os.getcwd() if module else os.path.dirname(os.path.abspath(script))
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = first
    else:
        sys.path.insert(0, first)
    sys.argv = [os.path.abspath(script) if module else script, *script_args]

    recorder: _PlainRun | _SurveyRun | _DigestRun | Recorder
    try:
        if spec.plain_state or spec.step_times:
            recorder = _PlainRun(spec.plain_state, spec.steps, spec.step_times)
        elif spec.survey:
            recorder = _SurveyRun(spec.survey, spec.steps)
        elif spec.digests:
            recorder = _DigestRun(spec.digests, spec.steps, str(files.progress))
        else:
            assert spec.trace is not None  # (a recorded run when no other file is named)
            capture = frozenset(spec.capture)
            if spec.capture_rank is not None and spec.capture_rank != int(rank):
                capture = frozenset()  # event numbers are another rank's
            record_options = RecordOptions(
                steps=spec.steps,
                exit_on_stop=True,
                argv=tuple(sys.argv),
                capture=capture,
                capture_dir=spec.capture_dir,
                snapshot_dir=str(files.steps) if spec.snapshots else None,
                start_step=spec.start_step,
                modules_only=spec.modules_only,
                inside=spec.inside,
                progress_file=str(files.progress),
                stop_when_captured=launched is None,
            )
            recorder = Recorder(spec.trace, record_options)
        undo = apply_interventions(spec.interventions)
    except Exception as exc:  # pragma: no cover - our own failure, not the user's
        print(f"bisector: cannot start recording: {exc}", file=sys.stderr)
        sys.exit(EXIT_SETUP_FAILED)

    code: int = 0
    error: str | None = None
    global _stage
    try:
        with recorder:
            _stage = "running"
            try:
                if spec.source:  # a patched copy of the script's code, run as the script
                    _run_as(script, spec.source, module)
                elif module:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(script, run_name="__main__")
            finally:
                _stage = "after"  # the recorder finishes the trace: not to be interrupted
    except StopRun:
        code = 0
    except InternalFailure as exc:  # ours, not the script's: our traceback, for the log
        sys.stderr.write(f"bisector: internal error while recording: {exc}\n{exc.details}")
        code = EXIT_INTERNAL
        error = f"bisector internal error: {exc}"
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # the user's script failed: show its traceback as its own
        _print_user_traceback(exc)
        code = EXIT_SCRIPT_RAISED
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        if spec.interventions and (spec.trace or spec.digests):
            _write_notes(str(files.intervened))
        undo()
    if launched is not None:
        _write_status(str(files.status), rank, code, error)
    sys.stdout.flush()
    sys.stderr.flush()
    # The trace is complete on disk; skip interpreter teardown, which can hang on threads the
    # script left running (DataLoader workers, progress bars).
    os._exit(code)


def _run_as(script: str, source: str, module_name: str | None = None) -> None:
    """Run the code of ``source`` as ``runpy.run_path(script)`` runs the script: as module
    ``__main__`` whose ``__file__`` is the script (its frames name the script's path); for a
    module run with ``-m``, in its package (relative imports work)."""
    import types

    with open(source, encoding="utf-8") as file:
        code = compile(file.read(), script, "exec")
    module = types.ModuleType("__main__")
    module.__file__ = script
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    if module_name:
        package = module_name if script.endswith("__main__.py") else module_name.rpartition(".")[0]
        module.__package__ = package
        if package:
            importlib.import_module(package)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(code, module.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _restore_pythonpath(original: str, package_root: str) -> None:
    """Give the script the environment and sys.path it would have had without us."""
    if original:
        os.environ["PYTHONPATH"] = original
    else:
        os.environ.pop("PYTHONPATH", None)
    for i, entry in enumerate(sys.path[1:], start=1):
        if entry and os.path.abspath(entry) == package_root:
            del sys.path[i]
            break


def _write_notes(path: str) -> None:
    """What the interventions noted in this run (see interventions.child_notes), for the
    parent's check that they took effect."""
    from bisector.confirm.interventions import child_notes

    try:
        with open(path, "w") as file:
            json.dump(child_notes(), file)
    except OSError:
        pass


# Where the rank is: "before" the user's script, "running" it, "after" it (writing its files).
_stage = "before"


def _terminated(signum, frame) -> None:
    """torchrun's SIGTERM: stop the script as Ctrl-C would, so that the trace is finished.
    Once only (a second one while the trace is written is ignored), and never outside the
    script: before it there is nothing to keep, after it the rank is ending anyway."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _stage == "before":
        os._exit(130)
    if _stage == "running":
        raise KeyboardInterrupt("terminated by the launcher")


def _write_status(path: str, rank: str, code: int, error: str | None) -> None:
    """One line per rank for the parent: how and when this rank ended (a rank killed leaves
    none); the first rank to fail is the one to name."""
    status = {"rank": int(rank), "exit_code": code, "time": time.time(), "error": error}
    try:
        with open(path, "w") as file:
            json.dump(status, file)
    except OSError:
        pass


def _stop() -> None:
    """End the script once the steps asked for are done (a BaseException: see StopRun)."""
    raise StopRun("the steps asked for are done")


class _PlainRun:
    """A run without recording: after ``steps`` optimizer steps, the training state is saved
    as a recorded run's snapshot is (the observer check, ``path``), and the run ends. With
    ``step_times``, the wall time of each step (from the end of the one before; the device
    synchronised at each step end) is written there as JSON (the cost of a fix)."""

    def __init__(self, path: str | None, steps: int | None, step_times: str | None = None):
        self._path = path
        self._steps = steps
        self._step_times = step_times
        self._times: list[float] = []
        self._last = time.perf_counter()
        self._done = 0
        self._depth = 0
        self._stepped: list = []
        self._hooks: list = []

    def __enter__(self) -> _PlainRun:
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        self._hooks = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        for hook in self._hooks:
            hook.remove()
        if self._step_times:
            with open(self._step_times, "w") as file:
                json.dump({"seconds": self._times}, file)
        return False

    def _pre(self, optimizer, args, kwargs) -> None:
        self._depth += 1
        self._stepped.append(optimizer)  # as the Recorder does, so both snapshots line up

    def _post(self, optimizer, args, kwargs) -> None:
        from pathlib import Path

        from bisector.capture import snapshots

        self._depth -= 1
        if self._depth:
            return
        self._done += 1
        if self._step_times:
            import torch

            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            now = time.perf_counter()
            self._times.append(now - self._last)
            self._last = now
        if self._steps is not None and self._done >= self._steps:
            if self._path:
                state = snapshots.state_tensors(self._stepped, lambda p: None)
                snapshots.save(Path(self._path), state)
            _stop()
        self._stepped = []


class _SurveyRun:
    """A survey run (``bisector doctor``): which ops run, on which device, from which line."""

    def __init__(self, path: str, steps: int | None):
        from bisector.capture.survey import Survey

        self._path = path
        self._survey = Survey(steps, _stop)

    def __enter__(self) -> _SurveyRun:
        self._survey.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        from bisector.doctor import write_survey

        self._survey.__exit__(None, None, None)
        ops = {key: tuple(value) for key, value in self._survey.ops.items()}
        write_survey(self._path, ops, self._survey.steps)
        return False


class _DigestRun:
    """A digest-only run (the first level of ``find``): step digests, no op recording."""

    def __init__(self, path: str, steps: int | None, progress_file: str):
        self._digests = GlobalDigests(
            path, steps, _stop, argv=list(sys.argv), progress_file=progress_file
        )

    def __enter__(self) -> _DigestRun:
        self._digests.install()
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self._digests.close(*ending(exc_type, exc))
        return False


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _print_user_traceback(exc: BaseException) -> None:
    """Print the traceback as `python script.py` would: without runpy's frames, and without
    bisector's (the dispatch handler sits between the user's line and torch's op)."""
    ours = os.path.dirname(os.path.abspath(bisector.__file__))
    boot = (os.path.dirname(runpy.__file__), "<frozen")
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(boot + (ours,)):
        tb = tb.tb_next
    shown = traceback.TracebackException(type(exc), exc, tb)
    shown.stack = traceback.StackSummary.from_list(
        [frame for frame in shown.stack if not os.path.abspath(frame.filename).startswith(ours)]
    )
    sys.stderr.write("".join(shown.format()))


if __name__ == "__main__":
    main()
