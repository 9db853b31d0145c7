"""Run a user's script in a fresh Python process under the Recorder, as ``python script.py`` would.

The parent side (``run_recorded``) checks the script, starts the child, keeps its output in a log
file, forwards Ctrl-C, and turns a failed run into a ScriptError. The child side is
``bisector._child``.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bisector.digests import Digests
from bisector.digests import load as load_digests
from bisector.errors import Interrupted, ScriptError, TraceError
from bisector.report import RunInfo
from bisector.trace import Trace, load

# Exit status the child uses when the user's script raised (its traceback is on stderr).
EXIT_SCRIPT_RAISED = 97
# Exit status the child uses when bisector itself could not start recording.
EXIT_SETUP_FAILED = 98
# Seconds we give a child to write its trace after Ctrl-C before we stop it harder.
_GRACE = 20.0


@dataclass(frozen=True)
class RunOptions:
    """How one recorded run is made.

    Attributes:
        steps: stop after this many optimizer steps (None: run the script to its end).
        python: the Python interpreter of the child (default: this one).
        timeout: seconds before a run is stopped (None: no limit).
        echo: let the script's output through to our stdout/stderr as well as the log.
        capture: event indices whose op inputs the run saves (for a replay), in ``capture_dir``.
        interventions: names of interventions applied in the child (see confirm/).
        snapshots: save the training state after each step next to the trace (``.steps/``).
        start_step: record ops only from this optimizer step on (earlier steps run unrecorded).
    """

    steps: int | None = 2
    python: str = sys.executable
    timeout: float | None = None
    echo: bool = False
    capture: tuple[int, ...] = ()
    capture_dir: str | None = None
    interventions: tuple[str, ...] = ()
    snapshots: bool = False
    start_step: int = 0


def check_script(script: str | os.PathLike) -> Path:
    """Check that the script exists and parses, before anything runs.

    Raises:
        ScriptError: missing, not a file, unreadable, or a syntax error.
    """
    path = Path(script)
    if not path.exists():
        raise ScriptError(f"script not found: {script}")
    if not path.is_file():
        raise ScriptError(f"{script} is not a file")
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"cannot read {script}: {exc.strerror}") from None
    try:
        ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ScriptError(
            f"{script} has a syntax error at line {exc.lineno}: {exc.msg}; fix it and run again"
        ) from None
    except ValueError as exc:  # e.g. null bytes
        raise ScriptError(f"{script} is not a Python source file ({exc})") from None
    return path


def run_recorded(
    script: str | os.PathLike,
    args: tuple[str, ...],
    trace: Path,
    options: RunOptions,
    name: str = "A",
) -> tuple[RunInfo, Trace]:
    """Run the script once in a fresh process, recording into ``trace``.

    The child gets the script's own argv, the script's folder on sys.path, our working folder
    and our environment unchanged (no seeds, no PYTHONHASHSEED).

    Returns:
        What the run did (trace file, events, how it ended), and the trace, loaded (callers
        analyse it without reading the file again).

    Raises:
        ScriptError: the script raised, exited non-zero, or recorded no op.
        Interrupted: Ctrl-C; the trace written so far is kept.
    """
    extra = ["--trace", str(trace)]
    if options.capture and options.capture_dir:
        extra += ["--capture", ",".join(map(str, options.capture))]
        extra += ["--capture-dir", options.capture_dir]
    if options.snapshots:
        extra += ["--snapshot-dir", str(trace.with_suffix(".steps"))]
    if options.start_step:
        extra += ["--start-step", str(options.start_step)]
    path, output, code, seconds = _run_child(script, args, trace, extra, options, name)
    try:
        loaded = load(trace)
    except TraceError as exc:
        raise ScriptError(f"run {name} left no readable trace: {exc}", output=output) from None
    if len(loaded) == 0:
        raise ScriptError(
            f"{path.name} ran without calling any torch operator: bisector records PyTorch "
            "training scripts",
            output=output,
        )
    info = RunInfo(
        name=name,
        trace=str(trace),
        events=len(loaded),
        steps=int(loaded.footer.get("steps", 0)),
        status=str(loaded.footer.get("status", "incomplete")),
        complete=loaded.complete,
        exit_code=code,
        seconds=round(seconds, 3),
        log=str(trace.with_suffix(".log")),
    )
    return info, loaded


def run_digests(
    script: str | os.PathLike,
    args: tuple[str, ...],
    path: Path,
    options: RunOptions,
    name: str = "A",
) -> tuple[RunInfo, Digests]:
    """Run the script once in a fresh process, writing step digests only (no op recording).

    Returns:
        What the run did, and its digests.

    Raises:
        ScriptError: the script raised or exited non-zero.
        Interrupted: Ctrl-C; the digests written so far are kept.
    """
    _, output, code, seconds = _run_child(
        script, args, path, ["--digests", str(path)], options, name
    )
    try:
        loaded = load_digests(path)
    except TraceError as exc:
        raise ScriptError(
            f"run {name} left no readable digest file: {exc}", output=output
        ) from None
    info = RunInfo(
        name=name,
        trace=str(path),
        events=0,
        steps=int(loaded.footer.get("steps", len(loaded.steps))),
        status=str(loaded.footer.get("status", "incomplete")),
        complete=loaded.complete,
        exit_code=code,
        seconds=round(seconds, 3),
        log=str(path.with_suffix(".log")),
    )
    return info, loaded


def _run_child(
    script: str | os.PathLike,
    args: tuple[str, ...],
    output_file: Path,
    extra: list[str],
    options: RunOptions,
    name: str,
) -> tuple[Path, str, int, float]:
    """Start the child on the script, wait for it, and turn a failed run into an exception.

    Returns:
        (the script's path, its output, exit code (0), seconds).
    """
    path = check_script(script)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    log = output_file.with_suffix(".log")
    # Import bisector from where this one lives without touching the child's environment.
    boot = (
        f"import sys; sys.path.insert(0, {_package_root()!r}); "
        "import bisector._child as child; child.main()"
    )
    command = [options.python, "-c", boot, *extra]
    if options.steps is not None:
        command += ["--steps", str(options.steps)]
    env = None
    if options.interventions:
        from bisector.confirm.interventions import child_env

        command += ["--intervene", ",".join(options.interventions)]
        env = {**os.environ, **child_env(list(options.interventions))}
    command += ["--", str(script), *args]
    started = time.perf_counter()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE if options.echo else log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            code = _wait(process, log_file, options)
        except KeyboardInterrupt:
            _interrupt(process)
            raise Interrupted(
                f"interrupted during run {name}; what was recorded is kept in {output_file}"
            ) from None
    seconds = time.perf_counter() - started
    output = log.read_text(errors="replace")
    recorded = f"recorded so far: {output_file}"
    if code == EXIT_SCRIPT_RAISED:
        raise ScriptError(
            f"{path.name} raised an exception in run {name} (its traceback is above; {recorded})",
            output=output,
            exit_code=code,
        )
    if code == EXIT_SETUP_FAILED:
        raise ScriptError(
            f"bisector could not start recording run {name}", output=output, exit_code=code
        )
    if code is None:
        raise ScriptError(
            f"run {name} took longer than {options.timeout:g} s and was stopped; {recorded}",
            output=output,
        )
    if code in (130, -signal.SIGINT):
        raise Interrupted(f"run {name} was interrupted; what was recorded is kept in {output_file}")
    if code != 0:
        raise ScriptError(
            f"{path.name} exited with status {code} in run {name} (its output is above; "
            f"{recorded})",
            output=output,
            exit_code=code,
        )
    return path, output, code, seconds


def _package_root() -> str:
    """The folder holding the bisector package, so the child imports this very bisector."""
    return str(Path(__file__).resolve().parent.parent)


def _wait(process: subprocess.Popen, log_file, options: RunOptions) -> int | None:
    if options.echo and process.stdout is not None:
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            log_file.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    try:
        return process.wait(timeout=options.timeout)
    except subprocess.TimeoutExpired:
        _interrupt(process)
        return None


def _interrupt(process: subprocess.Popen) -> None:
    """Ask the child to stop as Ctrl-C would (it writes its trace), then insist."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: stop now
        process.kill()
        process.wait()
